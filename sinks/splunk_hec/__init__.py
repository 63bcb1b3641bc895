"""The `splunk_hec` sink: audit records as HEC event envelopes, POSTed in batches to Splunk's HTTP Event Collector.

Layers (facts from reference/sinks.md §1), one module each:
- `encoding`: pure, record → envelope → newline-separated JSON objects (`render_event`, `render_batch`).
- `verdicts`: one HEC answer (status + `code`) → one `Verdict`, from the code table (§1.6, §1.7).
- `acks`: the indexer-acknowledgement channel (§1.5): the channel id, ack polls and waiting for them.
- `sink`: `SplunkHecSink` owns the httpx client; cuts records into requests by count and bytes, sends them, and turns
  the verdicts into a per-record `DeliveryReport`.

It never retries on its own: retries live in the deliver job's RQ Retry. The only re-sends inside one `send` are
the ones HEC asks for by shape: halves of a request refused as too large (413), and the events after the one a 400
with `invalid-event-number` refused (HEC indexed those before it and never read those after it). Each such re-send
carries fewer events than the request before it, so one `send` makes at most about 2 x len(records) requests.

Config errors (401/403, wrong URL, codes 1-5, 10, 11, 14, 16, 21, 22) keep the records and raise an alert instead
of dropping them (the complaint against Vector and Fluent Bit in §5.5). With `ack = true` a request counts as
delivered only once its ackId reads true (§1.5); otherwise the records are retried (at least once: every envelope
carries `fields.event_id` for dedupe).
"""
