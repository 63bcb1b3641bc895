"""The subcommands of `keytrail`, one module per area; each exposes `register(subparsers)`."""
