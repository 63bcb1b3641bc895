"""keytrail: The Auth API's key-lifecycle webhooks, verified, durably queued, normalized and shipped."""

__version__ = "0.1.0"
