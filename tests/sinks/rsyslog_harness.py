"""A private rsyslogd on free 127.0.0.1 ports (UDP, TCP, PTCP, TLS, mutual TLS, RELP, RELP over TLS with and
without client-certificate name checking) that the syslog tests send to.

rsyslog writes one JSON object per message it received, exposing what it parsed: PRI, facility, severity, timestamp,
hostname, app-name, procid, msgid, the raw structured data, MSG, the input it came in on, and `parsed`, the JSON that
`mmpstrucdata` (SD params, unescaped) or liblognorm's CEF parser (header + extension, unescaped) made of it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INPUTS = ("udp", "tcp", "ptcp", "tls", "mtls", "relp", "relp_tls", "relp_mtls", "relp_other_peer")
# imrelp with tls.authMode="name" admits only clients whose certificate (from the CA) names a permitted peer:
# `relp_mtls` permits our client certificate's name, `relp_other_peer` only a name it does not carry.
RELP_PERMITTED_PEER = "keytrail-client"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 15.0


def terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a collector closes its sessions and writes what it queued), then SIGKILL after STOP_TIMEOUT."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)


class Unavailable(Exception):
    """rsyslogd, one of its modules, or openssl is not installed."""


def find_rsyslogd() -> str:
    found = shutil.which("rsyslogd", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if found is None:
        raise Unavailable("rsyslogd not found (Debian packages: rsyslog rsyslog-gnutls rsyslog-relp)")
    return found


@dataclass(frozen=True)
class Certs:
    """A throwaway CA, a server certificate for localhost / 127.0.0.1, and a client certificate, all from that CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def generate(cls, directory: Path, *, tool: str | None = None) -> Certs:
        """With certtool (gnutls-bin, which rsyslog's TLS tests need anyway) or else the openssl CLI."""
        directory.mkdir(parents=True, exist_ok=True)
        tool = tool or ("certtool" if shutil.which("certtool") else "openssl")
        binary = shutil.which(tool)
        if binary is None:
            raise Unavailable("neither certtool nor openssl found (Debian package: gnutls-bin or openssl)")

        def run(*args: str) -> None:
            subprocess.run([binary, *args], cwd=directory, check=True, capture_output=True, timeout=30)

        if tool == "certtool":
            _with_certtool(run, directory)
        else:
            _with_openssl(run, directory)
        return cls(
            ca=directory / "ca.pem",
            server_cert=directory / "server.pem",
            server_key=directory / "server.key",
            client_cert=directory / "client.pem",
            client_key=directory / "client.key",
        )


ROLES = {
    "server": ("localhost", "127.0.0.1", "serverAuth", "tls_www_server"),
    "client": ("keytrail-client", None, "clientAuth", "tls_www_client"),
}


def _with_certtool(run: Callable[..., None], directory: Path) -> None:
    (directory / "ca.tmpl").write_text('cn = "keytrail test CA"\nca\ncert_signing_key\nexpiration_days = 2\n')
    run("--generate-privkey", "--key-type=ecdsa", "--outfile", "ca.key")
    run("--generate-self-signed", "--load-privkey", "ca.key", "--template", "ca.tmpl", "--outfile", "ca.pem")
    for role, (dns, ip, _, purpose) in ROLES.items():
        address = f'ip_address = "{ip}"\n' if ip else ""
        template = f'cn = "{role}"\ndns_name = "{dns}"\n{address}{purpose}\nsigning_key\nexpiration_days = 2\n'
        (directory / f"{role}.tmpl").write_text(template)
        run("--generate-privkey", "--key-type=ecdsa", "--outfile", f"{role}.key")
        ca = ("--load-ca-certificate", "ca.pem", "--load-ca-privkey", "ca.key")
        run("--generate-certificate", "--load-privkey", f"{role}.key", *ca, "--template", f"{role}.tmpl",
            "--outfile", f"{role}.pem")  # fmt: skip


def _with_openssl(run: Callable[..., None], directory: Path) -> None:
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    ca_extensions = ("-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    run("req", "-x509", *ec, *ca_extensions, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=ca")
    for role, (dns, ip, usage, _) in ROLES.items():
        names = f"DNS:{dns}" + (f",IP:{ip}" if ip else "")
        (directory / f"{role}.ext").write_text(f"subjectAltName={names}\nextendedKeyUsage={usage}\n")
        run("req", *ec, "-keyout", f"{role}.key", "-out", f"{role}.csr", "-subj", f"/CN={role}")
        signing = ("-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-extfile", f"{role}.ext")
        run("x509", "-req", "-in", f"{role}.csr", "-out", f"{role}.pem", *signing)


def free_ports(names: tuple[str, ...]) -> dict[str, int]:
    """Distinct free ports: every probe socket stays bound until all are chosen."""
    probes: dict[str, socket.socket] = {}
    try:
        for name in names:
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if name == "udp" else socket.SOCK_STREAM)
            probes[name] = probe
            probe.bind(("127.0.0.1", 0))
        return {name: int(probe.getsockname()[1]) for name, probe in probes.items()}
    finally:
        for probe in probes.values():
            probe.close()


# No maxMessageSize: the tests run against rsyslog's default limit (8096 octets in 8.2302), the one a collector left
# as installed enforces, so a sink default above it shows up as cut messages.
CONFIG = """\
global(workDirectory="{work}"
       defaultNetstreamDriverCAFile="{ca}" defaultNetstreamDriverCertFile="{cert}"
       defaultNetstreamDriverKeyFile="{key}")
# Acknowledged (RELP) messages sit in the main queue until written; give a stopping rsyslogd time to write them.
main_queue(queue.timeoutShutdown="10000")
module(load="imudp")
module(load="imtcp")
module(load="imptcp")
# OpenSSL, not GnuTLS: librelp's GnuTLS server demands a client certificate whenever it has one of its own ("peer
# did not provide a certificate"), so one-way TLS (server certificate only, as `relp_tls` is) works only with OpenSSL.
module(load="imrelp" tls.tlslib="openssl")
module(load="mmpstrucdata")
module(load="mmnormalize")
input(type="imudp"  address="127.0.0.1" port="{udp}"  name="kt_udp")
input(type="imtcp"  address="127.0.0.1" port="{tcp}"  name="kt_tcp")
input(type="imptcp" address="127.0.0.1" port="{ptcp}" name="kt_ptcp")
input(type="imtcp"  address="127.0.0.1" port="{tls}"  name="kt_tls"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
input(type="imtcp"  address="127.0.0.1" port="{mtls}" name="kt_mtls"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="x509/certvalid")
input(type="imrelp" address="127.0.0.1" port="{relp}" name="kt_relp")
input(type="imrelp" address="127.0.0.1" port="{relp_tls}" name="kt_relp_tls"
      tls="on" tls.caCert="{ca}" tls.myCert="{cert}" tls.myPrivKey="{key}")
input(type="imrelp" address="127.0.0.1" port="{relp_mtls}" name="kt_relp_mtls"
      tls="on" tls.caCert="{ca}" tls.myCert="{cert}" tls.myPrivKey="{key}"
      tls.authMode="name" tls.permittedPeer=["{permitted_peer}"])
input(type="imrelp" address="127.0.0.1" port="{relp_other_peer}" name="kt_relp_other_peer"
      tls="on" tls.caCert="{ca}" tls.myCert="{cert}" tls.myPrivKey="{key}"
      tls.authMode="name" tls.permittedPeer=["someone-else"])

template(name="parsed" type="list" option.jsonf="on") {{
  property(outname="input" name="inputname" format="jsonf")
  property(outname="pri" name="pri" format="jsonf")
  property(outname="facility" name="syslogfacility" format="jsonf")
  property(outname="severity" name="syslogseverity" format="jsonf")
  property(outname="version" name="protocol-version" format="jsonf")
  property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app_name" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="sd" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
  property(outname="parsed" name="$!" format="jsonf")
}}

if $inputname startswith "kt_" then {{
  action(type="mmpstrucdata")
  if $msg startswith "CEF:" then action(type="mmnormalize" rule=["rule=:%cef:cef%"])
  action(type="omfile" file="{out}" template="parsed")
  stop
}}
action(type="omfile" file="{internal}")
"""


class Rsyslog:
    """One rsyslogd process with its own config, work directory, pid file and output; restartable on the same ports."""

    def __init__(self, directory: Path, certs: Certs) -> None:
        self.binary = find_rsyslogd()
        self.directory = directory
        self.certs = certs
        self.ports = free_ports(INPUTS)
        self.output = directory / "out.jsonl"
        self.internal = directory / "internal.log"
        self.stderr = directory / "stderr.log"
        self.pidfile = directory / "rsyslogd.pid"
        self.config = directory / "rsyslog.conf"
        (directory / "work").mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            CONFIG.format(
                work=directory / "work",
                ca=certs.ca,
                cert=certs.server_cert,
                key=certs.server_key,
                out=self.output,
                internal=self.internal,
                permitted_peer=RELP_PERMITTED_PEER,
                **self.ports,
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.stderr.open("ab") as stderr:
            self.process = subprocess.Popen(
                [self.binary, "-n", "-f", str(self.config), "-i", str(self.pidfile)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._listening():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = self.stderr.read_text(errors="replace")
                if "could not load module" in log:
                    raise Unavailable(f"rsyslogd lacks a module (install rsyslog-gnutls, rsyslog-relp): {log[-500:]}")
                raise RuntimeError(f"rsyslogd did not start listening on {self.ports}: {log[-2000:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Graceful (SIGTERM): rsyslogd closes its sessions (RELP sends `serverclose`) and writes what it queued."""
        if self.process is not None:
            terminate(self.process)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def _listening(self) -> bool:
        """Every input bound (read from /proc/net, so no probe connection shows up in rsyslog's logs)."""
        tcp = _bound_ports(Path("/proc/net/tcp"), listening=True)
        udp = _bound_ports(Path("/proc/net/udp"), listening=False)
        return all(port in (udp if name == "udp" else tcp) for name, port in self.ports.items())

    def messages(self) -> list[dict[str, Any]]:
        if not self.output.exists():
            return []
        text = self.output.read_bytes().decode("utf-8", errors="replace")
        complete = text[: text.rfind("\n") + 1]  # rsyslog may be in the middle of writing the last line
        return [_decoded(json.loads(line)) for line in complete.splitlines() if line.strip()]

    def wait_for(self, event_ids: set[str], *, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Messages that carry any of `event_ids`, once every one of them arrived (or what arrived by the timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [message for message in self.messages() if event_id_of(message) in event_ids]
            if {event_id_of(message) for message in found} >= event_ids or time.monotonic() > deadline:
                return found
            time.sleep(0.02)


def event_id_of(message: dict[str, Any]) -> str | None:
    parsed = message.get("parsed") or {}
    sd = parsed.get("rfc5424-sd", {})
    for params in sd.values():
        if "event_id" in params:
            return str(params["event_id"])
    external_id = parsed.get("cef", {}).get("Extensions", {}).get("externalId")
    return None if external_id is None else str(external_id)


def _decoded(message: dict[str, Any]) -> dict[str, Any]:
    parsed = message.get("parsed")
    message["parsed"] = json.loads(parsed) if parsed else {}
    return message


def _bound_ports(table: Path, *, listening: bool) -> set[int]:
    ports: set[int] = set()
    for line in table.read_text().splitlines()[1:]:
        fields = line.split()
        address, state = fields[1], fields[3]
        host, _, port = address.partition(":")
        if host == "0100007F" and (state == "0A" or not listening):
            ports.add(int(port, 16))
    return ports
