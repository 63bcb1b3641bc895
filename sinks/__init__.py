"""Sinks: where audit records go. One module per target; this registry maps a config `type` to its class.

A `type` not in the registry is read as `package.module:Class`, a user's own class that satisfies `Sink`
and has `from_settings(SinkSettings)`: that is all "pluggable" means here (no entry points, no metaclasses).
"""

from __future__ import annotations

import importlib
from typing import Any

from config.errors import ConfigError
from config.settings import Settings, SinkSettings
from sinks.base import DeliveryReport, Outcome, Sink
from sinks.errors import SinkDisabled, SinkError, SinkRejected, SinkUnavailable

# Import paths, not classes: building a Splunk sink should not import the syslog module's TLS setup.
BUILTIN: dict[str, str] = {
    "file": "sinks.file:FileSink",
    "splunk_hec": "sinks.splunk_hec.sink:SplunkHecSink",
    "syslog": "sinks.syslog.sink:SyslogSink",
    "slack": "sinks.slack:SlackSink",
    "webhook": "sinks.webhook:WebhookSink",
}

__all__ = [
    "BUILTIN",
    "DeliveryReport",
    "Outcome",
    "Sink",
    "SinkDisabled",
    "SinkError",
    "SinkRejected",
    "SinkUnavailable",
    "build_sink",
    "build_sinks",
    "sink_class",
]


def sink_class(type_name: str) -> Any:
    """The class for a config `type`: a built-in name or `package.module:Class`."""
    target = BUILTIN.get(type_name, type_name)
    if ":" not in target:
        known = ", ".join(sorted(BUILTIN))
        raise ConfigError([f"unknown sink type {type_name!r} (built-in: {known}; or package.module:Class)"])
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError([f"sink type {type_name!r}: cannot load {target}: {exc}"]) from None


def build_sink(settings: SinkSettings) -> Sink:
    cls = sink_class(settings.type)
    sink = cls.from_settings(settings)
    if not isinstance(sink, Sink):
        raise ConfigError([f"sinks.{settings.name}: {settings.type} does not provide name, send() and close()"])
    return sink


def build_sinks(settings: Settings) -> dict[str, Sink]:
    """Every configured sink, or one ConfigError that lists the problems of all of them."""
    problems: list[str] = []
    built: dict[str, Sink] = {}
    for sink_settings in settings.sinks:
        try:
            built[sink_settings.name] = build_sink(sink_settings)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        for sink in built.values():
            sink.close()
        raise ConfigError(problems)
    return built
