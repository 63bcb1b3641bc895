"""The data directory's secret files: the fingerprint pepper, the checkpoint key and the demo tenant's token.

Each is generated once, on first use, and kept there (0600); every process that needs one reads the same file.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from config.settings import Secret, Settings

PEPPER_FILE = "pepper"
CHECKPOINT_KEY_FILE = "checkpoint-key"
DEMO_TOKEN_FILE = "demo-token"  # noqa: S105 - a file name, not a secret


def read_secret_file(path: Path) -> str | None:
    """The value kept in `path`, or None when there is none yet."""
    return path.read_text(encoding="utf-8").strip() if path.exists() else None


def read_or_create_secret_file(path: Path, make: Callable[[], str]) -> tuple[str, bool]:
    """The value kept in `path`, and whether this call created it (with `make()`, readable by the owner only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two processes starting together agree on one value instead of overwriting each other.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip(), False
    value = make()
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    return value, True


def pepper(settings: Settings) -> bytes:
    """The key for fingerprints of raw API keys: configured (`audit.pepper`), else `<data_dir>/pepper`.

    Receivers on several machines must share one pepper: configure it there.
    """
    if settings.audit.pepper is not None:
        return settings.audit.pepper.reveal().encode()
    value, _ = read_or_create_secret_file(settings.data_dir / PEPPER_FILE, lambda: secrets.token_hex(32))
    return value.encode()


def checkpoint_key(settings: Settings, *, create: bool = True) -> bytes | None:
    """The checkpoint signing key, `<data_dir>/checkpoint-key` (0600), generated on first use when `create`.

    It must never live in the audit store: whoever can rewrite the store must not be able to re-sign it. Workers
    on several machines, and whoever runs `verify`, need the same key: copy the file (or mount it) to each."""
    path = settings.data_dir / CHECKPOINT_KEY_FILE
    if create:
        value, _ = read_or_create_secret_file(path, lambda: secrets.token_hex(32))
        return value.encode()
    existing = read_secret_file(path)
    return existing.encode() if existing is not None else None


def demo_token(data_dir: Path) -> tuple[Secret, bool]:
    """The embedded `demo` tenant's token and whether it was just generated (so it is printed only once)."""
    value, created = read_or_create_secret_file(data_dir / DEMO_TOKEN_FILE, lambda: "kt_" + secrets.token_urlsafe(24))
    return Secret(value), created
