"""The `syslog` sink: RFC 5424 or CEF messages over UDP, TCP, TLS or RELP to any syslog collector.

One module per part: `rfc5424` (the message and its UTF-8-safe truncation), `cef` (the CEF line in MSG),
`transports` (UDP, TCP and TLS, and how their failures read), `relp` (the RELP client), `sink` (ties them together).

What "delivered" means depends on the transport, and the transport is the operator's choice:

- `relp` (rsyslog's Reliable Event Logging Protocol): a record is delivered when the server answered `rsp 200` for
  its transaction number. This is the only transport with application-level acknowledgements; its client is written
  here (`relp`), as no maintained Python one exists. With `tls = true` the RELP session runs inside TLS
  (CA, client certificate and name checks as for `transport = "tls"`), like rsyslog imrelp's `tls="on"`.
- `tcp` / `tls` (RFC 6587 / RFC 5425): a successful write() only means the bytes reached our kernel. Before counting
  a batch as delivered we wait until the peer's TCP stack has acknowledged every byte (Linux `SIOCOUTQ` reads 0) and
  check that the peer has not closed the connection meanwhile. A peer that reads and then drops data can still lose
  it: use RELP when that matters.
- `udp` (RFC 5426): a datagram handed to the kernel counts as delivered. Lossy by definition; opt in knowingly.

Whatever was not confirmed is reported RETRY, so the deliver job's RQ retry re-sends it (duplicates are possible and
carry the same `event_id`). Connections are kept between `send` calls; before each use we check the peer has not
closed the connection (a restarted rsyslog closes it), and reconnect if it has.

Message layout, `format = "rfc5424"` (default):

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID [keytrail@32473 event_id=".." tenant=".." topic=".."
    entity_type=".." fingerprint=".."] BOM{compact JSON of the whole audit record}

PRI = facility * 8 + severity; facility defaults to `authpriv` (10: security messages that Debian's rsyslog keeps
out of world-readable logs), severity is mapped from the record's OCSF severity_id. MSGID is the topic.
`format = "cef"` puts the CEF line (see `cef`) in MSG, with no structured data and no BOM, since CEF collectors
look for `CEF:` right after the header.

Size: a message never exceeds `max_message` octets (default 2048 on UDP, the size RFC 5426 says every receiver should
accept; 8096 on TCP, TLS and RELP, the limit of an rsyslog left at its defaults, see RSYSLOG_DEFAULT_MAX). A receiver
that cuts a longer message itself cuts inside a character, loses our mark, and on a stream turns the rest into a
second message with no event_id; so we cut first. A longer message keeps its header and structured data and has its
MSG cut at a UTF-8 boundary, ending in ` [truncated]`; the structured data then says `truncated="<original MSG
octets>"`. A CEF line is cut the same way but keeps at least its header and `externalId`, and ends in
`cn1Label=truncated cn1=<original line octets>` (see `cef`). Newline framing cannot carry a line feed, so with
`framing = "newline"` any LF in a message becomes a space (our JSON never contains one; only unusual topics or tenant
names in structured data could).
"""
