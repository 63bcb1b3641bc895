"""Builds `Settings` from one TOML file plus `KEYTRAIL_*` environment overrides, reporting every problem at once.

Environment overrides name a value by its path with `__` between parts, sinks by their name:
`KEYTRAIL_SERVER__PORT=9000`, `KEYTRAIL_TENANTS__ACME__TOKEN=...`, `KEYTRAIL_SINKS__SPLUNK__URL=...`.
A value is read as TOML when it parses (numbers, booleans, arrays), else as a plain string.
A secret may be a literal, `env:NAME` or `file:/path`. A sink option is a secret when it comes from `env:`/`file:`
or its name says so (`token`, `secret`, `password`, `…_key`, `url`, `webhook_url`, …): its value is then a `Secret`
in the settings tree, whose repr never shows it. Redis and database URLs are checked here, so that no client later
fails on one with a traceback that quotes its password.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from config.errors import ConfigError
from config.settings import SECTIONS, ApiToken, Secret, Settings, SinkSettings, TenantSettings
from config.urls import url_problems

ENV_PREFIX = "KEYTRAIL_"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SINK_COMMON = {"name", "type", "topics", "tenants", "exclude_topics"}
# Sink option names whose literal values are secrets. A URL counts: a Slack or CRM webhook URL is the credential
# itself, and any URL may carry user info; masking a harmless one costs nothing.
SECRET_OPTION = re.compile(r"(^|_)(token|secret|password|passphrase|key|credentials?|url|dsn)$")
URL_SCHEMES: dict[str, tuple[str, ...]] = {
    "redis": ("redis", "rediss", "unix"),
    "audit": ("sqlite", "postgresql", "postgres"),
}


def load_settings(path: Path | None, environ: Mapping[str, str]) -> Settings:
    """Read the config file (`path`, else `KEYTRAIL_CONFIG`, else `./keytrail.toml` if present) and the environment.

    With no file at all, the result is the embedded defaults (plus environment overrides).
    """
    explicit = path is not None or "KEYTRAIL_CONFIG" in environ
    chosen = path or Path(environ.get("KEYTRAIL_CONFIG", "keytrail.toml"))
    if not chosen.exists():
        if explicit:
            raise ConfigError([f"config file {chosen} does not exist"])
        return settings_from_mapping({}, environ, source="embedded defaults")
    try:
        data = tomllib.loads(chosen.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read {chosen}: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{chosen} is not valid TOML: {exc}"]) from None
    return settings_from_mapping(data, environ, source=str(chosen))


def settings_from_mapping(data: Mapping[str, Any], environ: Mapping[str, str], *, source: str = "mapping") -> Settings:
    """Build settings from an already-parsed mapping (what tests use) with environment overrides applied."""
    problems: list[str] = []
    merged = _apply_environment(_plain(data), environ, problems)
    builder = _Builder(environ, problems)
    settings = builder.settings(merged, source)
    if problems:
        raise ConfigError(problems)
    assert settings is not None
    return settings


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_environment(data: dict[str, Any], environ: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == "KEYTRAIL_CONFIG":
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            problems.append(f"{name}: empty part in the variable name")
            continue
        value = _parse_env_value(raw)
        if path[0] == "sinks":
            if len(path) != 3:
                problems.append(f"{name}: sink overrides look like KEYTRAIL_SINKS__<NAME>__<KEY>")
                continue
            sinks = data.setdefault("sinks", [])
            match = [s for s in sinks if isinstance(s, dict) and str(s.get("name", "")).lower() == path[1]]
            if not match:
                problems.append(f"{name}: no sink named {path[1]!r} in the config")
                continue
            match[0][path[2]] = value
            continue
        if path[0] == "tenants" and len(path) == 3:
            # Tenant names keep their spelling from the file when one matches case-insensitively.
            tenants = data.setdefault("tenants", {})
            known = {t.lower(): t for t in tenants}
            tenants.setdefault(known.get(path[1], path[1]), {})[path[2]] = value
            continue
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(f"{name}: {part} is not a table")
                break
            node = child
        else:
            node[path[-1]] = value
    return data


class _Builder:
    def __init__(self, environ: Mapping[str, str], problems: list[str]) -> None:
        self.environ = environ
        self.problems = problems

    def settings(self, data: dict[str, Any], source: str) -> Settings | None:
        top: dict[str, Any] = {"source": source}
        for key, value in data.items():
            if key in SECTIONS:
                top[key] = self.section(SECTIONS[key], value, key)
            elif key == "tenants":
                top["tenants"] = self.tenants(value)
            elif key == "sinks":
                top["sinks"] = self.sinks(value)
            elif key == "data_dir":
                top["data_dir"] = Path(str(value))
            elif key == "log_level":
                level = str(value).lower()
                if level not in {"debug", "info", "warning", "error"}:
                    self.problems.append(f"log_level: {value!r} is not one of debug, info, warning, error")
                top["log_level"] = level
            else:
                self.problems.append(f"unknown setting {key!r}")
        for section, schemes in URL_SCHEMES.items():
            if top.get(section) is not None:
                self.problems.extend(url_problems(f"{section}.url", top[section].url, schemes))
        if self.problems:
            return None
        return Settings(**top)

    def section(self, cls: type[Any], value: Any, where: str, **fixed: Any) -> Any:
        if not isinstance(value, dict):
            self.problems.append(f"{where}: expected a table")
            return None
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls) if f.init} - set(fixed)
        kwargs: dict[str, Any] = dict(fixed)
        for key, raw in value.items():
            if key not in names:
                self.problems.append(f"{where}.{key}: unknown setting")
                continue
            kwargs[key] = self.coerce(hints[key], raw, f"{where}.{key}")
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.init
            and f.name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        for name in missing:
            self.problems.append(f"{where}.{name}: required")
        if missing:
            return None
        return cls(**kwargs)

    def coerce(self, hint: Any, raw: Any, where: str) -> Any:  # noqa: PLR0911, PLR0912
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin in (types.UnionType, typing.Union):
            inner = [a for a in args if a is not type(None)]
            return self.coerce(inner[0], raw, where)
        if origin is tuple:
            items = raw if isinstance(raw, list) else None
            if items is None:
                self.problems.append(f"{where}: expected a list")
                return ()
            if args[0] is ApiToken:
                return self.api_tokens(items, where)
            return tuple(self.coerce(args[0], item, f"{where}[{i}]") for i, item in enumerate(items))
        if hint is Secret:
            return self.secret(raw, where)
        if hint is bool:
            if not isinstance(raw, bool):
                self.problems.append(f"{where}: expected true or false, got {raw!r}")
            return bool(raw)
        if hint is int:
            if isinstance(raw, bool) or not isinstance(raw, int):
                self.problems.append(f"{where}: expected a whole number, got {raw!r}")
                return 0
            if raw < 0:
                self.problems.append(f"{where}: must not be negative")
            return raw
        if hint is float:
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                self.problems.append(f"{where}: expected a number, got {raw!r}")
                return 0.0
            if raw < 0:
                self.problems.append(f"{where}: must not be negative")
            return float(raw)
        if hint is str:
            if not isinstance(raw, str):
                self.problems.append(f"{where}: expected a string, got {raw!r}")
                return ""
            return raw
        if hint is Path:
            return Path(str(raw))
        raise TypeError(f"no coercion for {hint!r}")  # a settings class grew a type this loader does not know

    def secret(self, raw: Any, where: str) -> Secret:
        if not isinstance(raw, str) or not raw:
            self.problems.append(f"{where}: expected a secret string (literal, env:NAME or file:/path)")
            return Secret("")
        if raw.startswith("env:"):
            name = raw[4:]
            if name not in self.environ:
                self.problems.append(f"{where}: environment variable {name} is not set")
                return Secret("")
            return Secret(self.environ[name])
        if raw.startswith("file:"):
            try:
                return Secret(Path(raw[5:]).read_text(encoding="utf-8").strip())
            except OSError as exc:
                self.problems.append(f"{where}: cannot read secret file {raw[5:]}: {exc.strerror}")
                return Secret("")
        return Secret(raw)

    def secret_refs(self, value: Any, where: str) -> Any:
        """In a sink's table option (a webhook's `headers`), `env:`/`file:` values are resolved into Secrets."""
        if not isinstance(value, dict):
            return value
        return {
            k: self.secret(v, f"{where}.{k}") if isinstance(v, str) and v.startswith(("env:", "file:")) else v
            for k, v in value.items()
        }

    def api_tokens(self, items: list[Any], where: str) -> tuple[ApiToken, ...]:
        """`[api] tokens`: a plain secret string (named `token-N`, reads every tenant) or a table with a name, the
        token and the tenants it may read (`["*"]` for all)."""
        result: list[ApiToken] = []
        for i, item in enumerate(items):
            here = f"{where}[{i}]"
            if isinstance(item, dict):
                unknown = sorted(set(item) - {"name", "token", "tenants"})
                for key in unknown:
                    self.problems.append(f"{here}.{key}: unknown setting (a token takes name, token, tenants)")
                name = item.get("name")
                if not isinstance(name, str) or not NAME_PATTERN.match(name):
                    self.problems.append(f"{here}.name: required; letters, digits, '_', '-', '.' (max 64)")
                    continue
                here = f"{where}.{name}"
                if "token" not in item:
                    self.problems.append(f"{here}.token: required (literal, env:NAME or file:/path)")
                    continue
                token = self.secret(item["token"], f"{here}.token")
                tenants = self.coerce(tuple[str, ...], item["tenants"], f"{here}.tenants") if "tenants" in item else ()
                if not tenants or not all(tenants):
                    self.problems.append(f'{here}.tenants: required, non-empty list of tenant names (["*"] for all)')
                    continue
                result.append(ApiToken(name=name, token=token, tenants=tenants))
            else:
                result.append(ApiToken(name=f"token-{i + 1}", token=self.secret(item, here)))
        seen: set[str] = set()
        for entry in result:
            if entry.name in seen:
                self.problems.append(f"{where}: token name {entry.name!r} is used twice")
            seen.add(entry.name)
        return tuple(result)

    def tenants(self, value: Any) -> dict[str, TenantSettings]:
        if not isinstance(value, dict):
            self.problems.append("tenants: expected a table of tenants")
            return {}
        result: dict[str, TenantSettings] = {}
        for name, table in value.items():
            where = f"tenants.{name}"
            if not NAME_PATTERN.match(name):
                self.problems.append(f"{where}: a tenant name uses letters, digits, '_', '-', '.' (max 64)")
                continue
            tenant = self.section(TenantSettings, table, where, name=name)
            if tenant is None:
                continue
            if tenant.token is None and not tenant.signing_secrets:
                self.problems.append(f"{where}: set token, signing_secrets, or both (nothing would verify it)")
            if tenant.public_url is not None and not tenant.public_url.startswith(("http://", "https://")):
                self.problems.append(f"{where}.public_url: must start with http:// or https://")
            result[name] = tenant
        return result

    def sinks(self, value: Any) -> tuple[SinkSettings, ...]:
        if not isinstance(value, list):
            self.problems.append("sinks: expected an array of tables ([[sinks]])")
            return ()
        result: list[SinkSettings] = []
        seen: set[str] = set()
        for index, table in enumerate(value):
            where = f"sinks[{index}]"
            if not isinstance(table, dict):
                self.problems.append(f"{where}: expected a table")
                continue
            name, kind = table.get("name"), table.get("type")
            if not isinstance(name, str) or not NAME_PATTERN.match(name):
                self.problems.append(f"{where}.name: required; letters, digits, '_', '-', '.' (max 64)")
                continue
            where = f"sinks.{name}"
            if name in seen:
                self.problems.append(f"{where}: two sinks share this name")
            seen.add(name)
            if not isinstance(kind, str) or not kind:
                self.problems.append(f"{where}.type: required")
                continue
            routing = {
                key: self.coerce(tuple[str, ...], table[key], f"{where}.{key}")
                for key in ("topics", "tenants", "exclude_topics")
                if key in table
            }
            # A sink's own secrets (tokens, webhook URLs) are resolved here, so no sink ever reads the environment.
            options = {
                k: self.secret(v, f"{where}.{k}") if _is_secret_option(k, v) else self.secret_refs(v, f"{where}.{k}")
                for k, v in table.items()
                if k not in SINK_COMMON
            }
            result.append(SinkSettings(name=name, type=kind, options=options, **routing))
        return tuple(result)


def _is_secret_option(name: str, value: Any) -> bool:
    if not isinstance(value, str):
        return False
    return value.startswith(("env:", "file:")) or (bool(value) and SECRET_OPTION.search(name.lower()) is not None)
