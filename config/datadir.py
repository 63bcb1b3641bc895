"""The data directory: the fingerprint pepper and the demo tenant's token, generated once and kept there."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from config.settings import Secret, Settings


def _read_or_create(path: Path, make: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two processes starting together agree on one value instead of overwriting each other.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(make + "\n")
    return make


def pepper(settings: Settings) -> bytes:
    """The key for fingerprints of raw API keys: configured (`audit.pepper`), else `<data_dir>/pepper`.

    Receivers on several machines must share one pepper: configure it there.
    """
    if settings.audit.pepper is not None:
        return settings.audit.pepper.reveal().encode()
    return _read_or_create(settings.data_dir / "pepper", secrets.token_hex(32)).encode()


def demo_token(data_dir: Path) -> tuple[Secret, bool]:
    """The embedded `demo` tenant's token and whether it was just generated (so it is printed only once)."""
    path = data_dir / "demo-token"
    existed = path.exists()
    return Secret(_read_or_create(path, "kt_" + secrets.token_urlsafe(24))), not existed
