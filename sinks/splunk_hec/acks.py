"""HEC indexer acknowledgement (reference/sinks.md §1.5): the channel ackIds live on, its polls, and the wait."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx

from config.settings import display_url
from sinks.errors import SinkUnavailable
from sinks.http import unreachable
from sinks.splunk_hec.verdicts import as_int, describe, read_payload

ACK_PATH = "/services/collector/ack"
CHANNEL_HEADER = "X-Splunk-Request-Channel"


def classify_ack(status: int, body: bytes | Mapping[str, Any]) -> dict[int, bool] | SinkUnavailable:
    """An answer to an ack poll: {ackId: indexed?}, or why the poll failed. A 4xx means acks are unusable (alert);
    Vector quietly falls back to trusting the 200 there, which is how events get lost."""
    payload = read_payload(body)
    if status == 200:
        acks = payload.get("acks")
        if isinstance(acks, Mapping):
            return {int(k): v is True for k, v in acks.items() if str(k).isdigit()}
        return SinkUnavailable("HEC ack poll: answer without acks", alert=True)
    label = describe(status, as_int(payload.get("code")), payload, what="HEC ack poll")
    if 400 <= status < 500:
        return SinkUnavailable(
            f"{label}: indexer acknowledgement is unusable; fix the token or set ack = false", alert=True
        )
    return SinkUnavailable(label)


class AckChannel:
    """One channel per sink object, i.e. per worker process: ackIds are only meaningful on the channel that sent
    the events, and on the indexer that issued them (§1.5). Behind a load balancer the client's cookie jar carries
    the LB's stickiness cookie (AWSALB and the like), so polls reach the indexer that took the POST.
    `auth` gives the request headers (with the token and the channel) per poll, so no attribute holds them."""

    def __init__(self, client: httpx.Client, base_url: str, auth: Callable[[], dict[str, str]]) -> None:
        self.id = str(uuid.uuid4())
        self.url = base_url + ACK_PATH
        self._client = client
        self._auth = auth

    def rotate(self) -> None:
        """Start a fresh channel. After a send that left ackIds unconfirmed, or got one ackId from two indexers,
        those ids may still be pending on some indexer, where a later poll of the same number could read true for
        a batch it never held. A new channel starts at 0 with nothing pending anywhere (kafka-connect-splunk#162
        does the same on an ackId it already holds)."""
        self.id = str(uuid.uuid4())

    def poll(self, ack_ids: list[int]) -> dict[int, bool] | SinkUnavailable:
        try:
            response = self._client.post(
                self.url, params={"channel": self.id}, json={"acks": ack_ids}, headers=self._auth()
            )
        except httpx.RequestError as exc:
            return SinkUnavailable(unreachable(f"HEC at {display_url(self.url)}", exc))
        return classify_ack(response.status_code, response.content)

    def wait(
        self, ack_ids: Iterable[int], *, timeout: float, poll_interval: float
    ) -> tuple[set[int], SinkUnavailable | None]:
        """Poll until every ackId read true or `timeout` passed: the confirmed ids, and why the others were not
        (None when none is left). An alerting poll answer stops the wait at once."""
        waiting = set(ack_ids)
        confirmed: set[int] = set()
        deadline = time.monotonic() + timeout
        last_problem: SinkUnavailable | None = None
        while waiting:
            answer = self.poll(sorted(waiting))
            if isinstance(answer, SinkUnavailable):
                last_problem = answer
                if answer.alert:
                    break
            else:
                indexed = {ack_id for ack_id, done in answer.items() if done and ack_id in waiting}
                confirmed |= indexed
                waiting -= indexed
            remaining = deadline - time.monotonic()
            if not waiting or remaining <= 0:
                break
            time.sleep(min(poll_interval, remaining))
        if not waiting:
            return confirmed, None
        if last_problem is not None and last_problem.alert:
            return confirmed, last_problem
        detail = f" (last poll: {last_problem.reason})" if last_problem is not None else ""
        return confirmed, SinkUnavailable(
            f"HEC did not acknowledge {len(waiting)} request(s) within {timeout:g}s{detail}"
        )
