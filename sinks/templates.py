"""Body templates: a CRM-shaped JSON body per topic, filled from the audit record, for sinks that POST JSON.

A template is JSON (text, or a TOML table) whose strings may hold `$field` / `${field.path}` placeholders over the
record's dict (`${entity.fingerprint}`, `$topic`, `${metadata.product}`); `$$` is a literal `$`. A string that is
exactly one placeholder takes the field's JSON value (a number stays a number, a missing or empty field is null);
a placeholder inside longer text is replaced by the field as text (missing: empty). Since values are placed into the
parsed structure, never spliced into JSON text, no record content can break or inject into the body.

`templates` maps a topic or a glob (`api-key.*`) to a template; the first match in the order given wins, and a topic
with no match gets the sink's default body.
"""

from __future__ import annotations

import fnmatch
import json
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from config.settings import Secret
from events.records import Activity, Actor, AuditRecord, Entity, EntityType, Severity

# Fields whose content comes from the event and is open-ended: any path below them is accepted.
OPEN_FIELDS = frozenset({"metadata", "raw_redacted"})


class FieldTemplate(string.Template):
    """`string.Template` with dotted paths allowed in placeholders."""

    idpattern = r"[_a-z][_a-z0-9]*(?:\.[_a-z0-9]+)*"


SAMPLE = AuditRecord(
    record_id="rec_sample",
    event_id="evt_sample",
    tenant="tenant",
    topic="api-key.created",
    time="2026-01-01T00:00:00Z",
    received_at="2026-01-01T00:00:00Z",
    activity_id=Activity.CREATE,
    severity_id=Severity.INFORMATIONAL,
    entity=Entity(type=EntityType.API_KEY, uid="uid", name="name", fingerprint="fp", prefix="live_", last4="0000"),
    project_id="proj",
    account_id="acct",
    actor=Actor(uid="user", type="user"),
    metadata={"product": "sample"},
).to_dict()


def lookup(data: Mapping[str, Any], path: str) -> Any:
    value: Any = data
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _known(path: str) -> bool:
    value: Any = SAMPLE
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return False
        if part in OPEN_FIELDS and value is SAMPLE:
            return True
        value = value[part]
    return True


def _fill(node: Any, data: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        return {key: _fill(value, data) for key, value in node.items()}
    if isinstance(node, list):
        return [_fill(item, data) for item in node]
    if not isinstance(node, str) or "$" not in node:
        return node
    template = FieldTemplate(node)
    names = template.get_identifiers()
    if len(names) == 1 and node in (f"${names[0]}", f"${{{names[0]}}}"):
        value = lookup(data, names[0])
        return None if value == "" else value
    values = {name: _text(lookup(data, name)) for name in names}
    return template.substitute(values)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return [node] if isinstance(node, str) else []


@dataclass(frozen=True, slots=True)
class BodyTemplate:
    pattern: str
    structure: Any

    def render(self, record: AuditRecord) -> bytes:
        body = _fill(self.structure, record.to_dict())
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def parse_template(pattern: str, raw: Any) -> BodyTemplate:
    """One template, or ValueError with a one-line reason (bad JSON, bad placeholder, unknown field)."""
    if isinstance(raw, Secret):
        raw = raw.reveal()
    if isinstance(raw, str):
        try:
            structure = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    elif isinstance(raw, dict | list):
        structure = raw
    else:
        raise ValueError(f"expected JSON text or a table, got {type(raw).__name__}")
    for text in _strings(structure):
        template = FieldTemplate(text)
        if not template.is_valid():
            bad = re.search(r"\$(?!\$|\{?[_a-zA-Z])\S{0,10}|\$\{[^}]*$|\$\{[^}]*[^_a-zA-Z0-9.}][^}]*\}", text)
            shown = bad.group(0) if bad else text[:20]
            raise ValueError(f"bad placeholder {shown!r} (use $field or ${{field.path}}; $$ for a dollar sign)")
        for name in template.get_identifiers():
            if not _known(name):
                raise ValueError(f"unknown field {name!r} (fields: {', '.join(sorted(SAMPLE))})")
    body = BodyTemplate(pattern, structure)
    json.loads(body.render(AuditRecord.from_dict(SAMPLE)))  # the sample must render to JSON: never fails today
    return body


def select(templates: tuple[BodyTemplate, ...], topic: str) -> BodyTemplate | None:
    return next((t for t in templates if fnmatch.fnmatchcase(topic, t.pattern)), None)
