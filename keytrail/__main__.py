"""`python -m keytrail` is the `keytrail` command."""

from keytrail.cli import main

raise SystemExit(main())
