"""Settings for every part of keytrail: one typed, frozen tree, read from TOML + environment in one place."""

from config.errors import ConfigError
from config.loader import load_settings, settings_from_mapping
from config.settings import (
    ApiSettings,
    AuditSettings,
    IngestSettings,
    RedisSettings,
    Secret,
    ServerSettings,
    Settings,
    SinkSettings,
    TenantSettings,
    WorkerSettings,
)

__all__ = [
    "ApiSettings",
    "AuditSettings",
    "ConfigError",
    "IngestSettings",
    "RedisSettings",
    "Secret",
    "ServerSettings",
    "Settings",
    "SinkSettings",
    "TenantSettings",
    "WorkerSettings",
    "load_settings",
    "settings_from_mapping",
]
