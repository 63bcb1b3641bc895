"""keytrail: The Auth API's key-lifecycle webhooks, verified, durably queued, normalized and shipped."""

from events.version import VERSION as __version__

__all__ = ["__version__"]
