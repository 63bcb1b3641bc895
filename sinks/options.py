"""Reads a sink's own options from its settings, collecting every problem into one ConfigError."""

from __future__ import annotations

from typing import Any, TypeVar

from config.errors import ConfigError
from config.settings import Secret, SinkSettings

T = TypeVar("T")


class Options:
    """`opts = Options(settings)`; read each key once (`opts.string("url")`); `opts.finish()` raises if anything
    was wrong or unknown. Keeps every sink's option parsing to a few declarative lines."""

    def __init__(self, settings: SinkSettings) -> None:
        self.settings = settings
        self.problems: list[str] = []
        self._seen: set[str] = set()

    def _raw(self, key: str) -> Any:
        self._seen.add(key)
        return self.settings.options.get(key)

    def _where(self, key: str) -> str:
        return f"sinks.{self.settings.name}.{key}"

    def string(self, key: str, default: str | None = None, *, choices: tuple[str, ...] = ()) -> str:
        raw = self._raw(key)
        if raw is None:
            if default is None:
                self.problems.append(f"{self._where(key)}: required")
                return ""
            return default
        if isinstance(raw, Secret):
            raw = raw.reveal()
        if not isinstance(raw, str):
            self.problems.append(f"{self._where(key)}: expected a string, got {raw!r}")
            return default or ""
        if choices and raw not in choices:
            self.problems.append(f"{self._where(key)}: {raw!r} is not one of {', '.join(choices)}")
        return raw

    def optional_string(self, key: str) -> str | None:
        if self.settings.options.get(key) is None:
            self._seen.add(key)
            return None
        return self.string(key)

    def secret(self, key: str, *, required: bool = True) -> Secret | None:
        raw = self._raw(key)
        if raw is None:
            if required:
                self.problems.append(f"{self._where(key)}: required (a literal, env:NAME or file:/path)")
            return None
        if isinstance(raw, Secret):
            return raw
        if isinstance(raw, str) and raw:
            return Secret(raw)
        self.problems.append(f"{self._where(key)}: expected a secret string")
        return None

    def integer(self, key: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
        raw = self._raw(key)
        if raw is None:
            return default
        if isinstance(raw, bool) or not isinstance(raw, int):
            self.problems.append(f"{self._where(key)}: expected a whole number, got {raw!r}")
            return default
        if raw < minimum or (maximum is not None and raw > maximum):
            bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
            self.problems.append(f"{self._where(key)}: {raw} is out of range ({bound})")
        return raw

    def number(self, key: str, default: float, *, minimum: float = 0.0) -> float:
        raw = self._raw(key)
        if raw is None:
            return default
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            self.problems.append(f"{self._where(key)}: expected a number, got {raw!r}")
            return default
        if raw < minimum:
            self.problems.append(f"{self._where(key)}: must be >= {minimum}")
        return float(raw)

    def boolean(self, key: str, default: bool) -> bool:
        raw = self._raw(key)
        if raw is None:
            return default
        if not isinstance(raw, bool):
            self.problems.append(f"{self._where(key)}: expected true or false, got {raw!r}")
            return default
        return raw

    def table(self, key: str) -> dict[str, Any]:
        """A TOML table option (empty when absent); its values are checked by the caller."""
        raw = self._raw(key)
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.problems.append(f"{self._where(key)}: expected a table")
            return {}
        return raw

    def finish(self) -> None:
        for key in sorted(set(self.settings.options) - self._seen):
            self.problems.append(f"{self._where(key)}: unknown option for type {self.settings.type!r}")
        if self.problems:
            raise ConfigError(self.problems)
