"""A private syslog-ng on free 127.0.0.1 ports, beside rsyslog, as a second real collector for the syslog sink tests.

Debian's syslog-ng-core conflicts with rsyslog, so scripts/install-syslog-ng unpacks it into a tree of its own
($KT_SYSLOG_NG_DIR, default /opt/keytrail-test/syslog-ng); this runs that tree's binary unprivileged-style in a
temporary directory (own config, persist file, pid file and control socket).

Inputs: `octet` and `tls` are syslog() sources (RFC 5424 with RFC 6587/5425 octet counting, as a SIEM's syslog input
is set up); `newline` is a network() source with flags(syslog-protocol) (RFC 5424, one message per line). syslog-ng
writes one JSON object per message: what it parsed (PROGRAM, MSGID, HOST, PID, facility, severity, ISO timestamp,
the raw SDATA and each SD param unescaped under `_SDATA`, MSG without the BOM) and, for a CEF message, the header
fields and extension pairs its regexp-parser() and kv-parser() took apart (under `cef`, values as sent: escaped).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from rsyslog_harness import Certs, Unavailable, _bound_ports, free_ports, terminate

INPUTS = ("octet", "newline", "tls")
DEFAULT_DIR = "/opt/keytrail-test/syslog-ng"
START_TIMEOUT = 10.0

# The CEF header as its spec defines it: seven |-separated fields, where `\|` and `\\` are escapes inside a field.
# (In the config it stands in single quotes, which syslog-ng takes as written, with no escapes of its own.)
FIELD = r"(?:[^|\\]|\\.)*"
CEF_HEADER = (
    rf"^CEF:(?<version>\d+)\|(?<DeviceVendor>{FIELD})\|(?<DeviceProduct>{FIELD})\|(?<DeviceVersion>{FIELD})"
    rf"\|(?<SignatureID>{FIELD})\|(?<Name>{FIELD})\|(?<Severity>{FIELD})\|(?<extension>.*)$"
)

CONFIG = """\
@version: 3.38
options {{ keep-hostname(yes); keep-timestamp(yes); stats-freq(0); ts-format(iso); frac-digits(6);
          send-time-zone("+00:00"); log-msg-size(65536); }};

source s_octet {{ syslog(ip("127.0.0.1") port({octet}) transport("tcp")); }};
source s_newline {{ network(ip("127.0.0.1") port({newline}) transport("tcp") flags(syslog-protocol)); }};
source s_tls {{ syslog(ip("127.0.0.1") port({tls}) transport("tls")
    tls(key-file("{key}") cert-file("{cert}") peer-verify(optional-untrusted))); }};
source s_internal {{ internal(); }};

parser p_cef {{
  regexp-parser(prefix("cef.") template("${{MSG}}") patterns('{cef_header}'));
  kv-parser(prefix("cef.ext.") template("${{cef.extension}}"));
}};

destination d_parsed {{ file("{out}" template("$(format-json --scope rfc5424 --scope nv-pairs --key SOURCE
  --pair facility_num=int(${{FACILITY_NUM}}) --pair severity_num=int(${{LEVEL_NUM}}) --pair isodate=${{ISODATE}}
  --pair sd=${{SDATA}} --pair msg=${{MSG}} --exclude cef.extension)\\n")); }};
destination d_internal {{ file("{internal}"); }};

log {{
  source(s_octet); source(s_newline); source(s_tls);
  if (message("^CEF:" type(pcre))) {{ parser(p_cef); }};
  destination(d_parsed);
}};
log {{ source(s_internal); destination(d_internal); }};
"""


def tree() -> Path:
    """The unpacked syslog-ng tree, or Unavailable with how to get it."""
    root = Path(os.environ.get("KT_SYSLOG_NG_DIR", DEFAULT_DIR))
    if not (root / "usr/sbin/syslog-ng").is_file():
        raise Unavailable(f"syslog-ng not unpacked in {root} (run scripts/install-syslog-ng)")
    return root


class SyslogNg:
    """One syslog-ng process with its own config and output on free ports; started by `start`, ended by `stop`."""

    def __init__(self, directory: Path, certs: Certs) -> None:
        self.root = tree()
        self.directory = directory
        self.certs = certs
        self.ports = free_ports(INPUTS)
        directory.mkdir(parents=True, exist_ok=True)
        self.output = directory / "out.jsonl"
        self.internal = directory / "internal.log"
        self.stderr = directory / "stderr.log"
        self.config = directory / "syslog-ng.conf"
        self.config.write_text(
            CONFIG.format(
                key=certs.server_key,
                cert=certs.server_cert,
                out=self.output,
                internal=self.internal,
                cef_header=CEF_HEADER,
                **self.ports,
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            str(self.root / "usr/sbin/syslog-ng"),
            f"--module-path={self.root / 'usr/lib/syslog-ng/3.38'}",
            "--no-caps",
            "-F",
            "-f",
            str(self.config),
            "-R",
            str(self.directory / "syslog-ng.persist"),
            "-p",
            str(self.directory / "syslog-ng.pid"),
            "-c",
            str(self.directory / "syslog-ng.ctl"),
        ]

    def start(self) -> None:
        environment = {**os.environ, "LD_LIBRARY_PATH": str(self.root / "usr/lib/syslog-ng")}
        with self.stderr.open("ab") as stderr:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, env=environment
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not set(self.ports.values()) <= _bound_ports(Path("/proc/net/tcp"), listening=True):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = self.stderr.read_text(errors="replace")
                if "error while loading shared libraries" in log:
                    raise Unavailable(f"syslog-ng lacks a library (run scripts/install-syslog-ng): {log[-500:]}")
                raise RuntimeError(f"syslog-ng did not start listening on {self.ports}: {log[-2000:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
        self.process = None

    def messages(self) -> list[dict[str, Any]]:
        if not self.output.exists():
            return []
        text = self.output.read_bytes().decode("utf-8", errors="replace")
        complete = text[: text.rfind("\n") + 1]  # syslog-ng may be in the middle of writing the last line
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def wait_for(self, count: int, *, source: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The messages that came in on `source` once there are `count` of them (or what arrived by the timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [message for message in self.messages() if message.get("SOURCE") == f"s_{source}"]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)
