"""The `file` sink: JSON Lines, one record per line, appended and flushed to disk before it counts as delivered."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from config.settings import SinkSettings
from events.records import AuditRecord
from sinks.base import DeliveryReport, Outcome
from sinks.errors import SinkUnavailable
from sinks.options import Options


def render_line(record: AuditRecord) -> bytes:
    return json.dumps(record.to_dict(), separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


class FileSink:
    def __init__(self, name: str, path: Path, *, fsync: bool = True) -> None:
        self.name = name
        self.path = path
        self.fsync = fsync
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: SinkSettings) -> Self:
        opts = Options(settings)
        path = Path(opts.string("path"))
        fsync = opts.boolean("fsync", True)
        opts.finish()
        return cls(settings.name, path, fsync=fsync)

    def send(self, records: Sequence[AuditRecord]) -> DeliveryReport:
        payload = b"".join(render_line(record) for record in records)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock, self.path.open("ab") as handle:
                handle.write(payload)
                handle.flush()
                if self.fsync:
                    os.fsync(handle.fileno())
        except OSError as exc:
            raise SinkUnavailable(f"cannot append to {self.path}: {exc.strerror}") from None
        return DeliveryReport.all(records, Outcome.DELIVERED)

    def close(self) -> None:
        return None
