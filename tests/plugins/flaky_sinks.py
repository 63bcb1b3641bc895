"""User-style sink classes (`type = "flaky_sinks:..."`) that tests load through the pluggable sink path."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from config.settings import SinkSettings
from events.records import AuditRecord
from sinks.base import DeliveryReport, Outcome
from sinks.errors import SinkDisabled, SinkRejected, SinkUnavailable
from sinks.options import Options


class SwitchSink:
    """Down (SinkUnavailable) while the file `switch` exists; otherwise appends event ids to `path`."""

    def __init__(self, name: str, path: Path, switch: Path) -> None:
        self.name, self.path, self.switch = name, path, switch

    @classmethod
    def from_settings(cls, settings: SinkSettings) -> Self:
        opts = Options(settings)
        sink = cls(settings.name, Path(opts.string("path")), Path(opts.string("switch")))
        opts.finish()
        return sink

    def send(self, records: Sequence[AuditRecord]) -> DeliveryReport:
        if self.switch.exists():
            raise SinkUnavailable("peer is down (test switch)")
        with self.path.open("a") as handle:
            handle.writelines(json.dumps({"event_id": r.event_id}) + "\n" for r in records)
        return DeliveryReport.all(records, Outcome.DELIVERED)

    def close(self) -> None:
        return None


class StallOnceSink(SwitchSink):
    """The first send creates `switch` and then hangs (so a test can SIGKILL the worker mid-job); later sends
    deliver normally."""

    def send(self, records: Sequence[AuditRecord]) -> DeliveryReport:
        if not self.switch.exists():
            self.switch.write_text("stalled")
            time.sleep(120)
        with self.path.open("a") as handle:
            handle.writelines(json.dumps({"event_id": r.event_id}) + "\n" for r in records)
        return DeliveryReport.all(records, Outcome.DELIVERED)


class RejectingSink(SwitchSink):
    """Rejects every record (a permanent 4xx, say) while the file `switch` exists; otherwise delivers."""

    def send(self, records: Sequence[AuditRecord]) -> DeliveryReport:
        if self.switch.exists():
            raise SinkRejected("peer said 422: unknown field (test switch)")
        return super().send(records)


class GoneSink(SwitchSink):
    """Answers like a CRM endpoint that was deleted (HTTP 410) while the file `switch` exists."""

    def send(self, records: Sequence[AuditRecord]) -> DeliveryReport:
        if self.switch.exists():
            raise SinkDisabled("410 Gone (test switch)")
        return super().send(records)
