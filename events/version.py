"""keytrail's version, for records, the User-Agent, RELP's offer and the OpenAPI document: read once, here."""

from __future__ import annotations

from importlib import metadata

try:
    VERSION = metadata.version("keytrail")
except metadata.PackageNotFoundError:  # a source tree that was never installed (pyproject.toml is the one source)
    VERSION = "0.0.0+source"
