"""The one retry engine of the connectors: `send_with_retries` for reads and idempotent calls,
`write_once` for creates, both on tenacity with one reading of Retry-After (seconds or an HTTP date)."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest

from clarus_pipelines.connectors.http import (
    ConnectorError,
    RetryableStatus,
    RetryAfterWait,
    RetryPolicy,
    retry_after_seconds,
    send_with_retries,
)
from clarus_pipelines.connectors.writes import write_once

FAST = RetryPolicy(attempts=4, max_elapsed_s=10.0, initial_s=0.0, max_backoff_s=0.0, jitter_s=0.0, max_retry_after_s=5.0)


def _response(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, request=httpx.Request("POST", "https://example.test/api/things"))


def test_retry_after_reads_seconds_and_http_dates():
    assert retry_after_seconds(_response(429, **{"Retry-After": "2"})) == 2.0
    in_three = email.utils.formatdate(time.time() + 3, usegmt=True)
    assert 1.0 < retry_after_seconds(_response(503, **{"Retry-After": in_three})) <= 3.0
    assert retry_after_seconds(_response(503, **{"Retry-After": "soon"})) is None
    assert retry_after_seconds(_response(429)) is None and retry_after_seconds(None) is None


def _failure(status: int, **headers: str) -> ConnectorError:
    cause = RetryableStatus(_response(status, **headers))
    try:
        raise ConnectorError("clarus", str(cause), status) from cause
    except ConnectorError as exc:
        return exc


def test_a_write_waits_what_an_http_date_retry_after_asks_for():
    """The wait `write_once` uses reads the HTTP-date form too (once only `send_with_retries` did)."""
    in_two = email.utils.formatdate(time.time() + 2, usegmt=True)

    class State:  # the piece of tenacity's RetryCallState the wait reads
        class outcome:  # noqa: N801
            @staticmethod
            def exception():
                return _failure(429, **{"Retry-After": in_two})

    assert 0.5 < RetryAfterWait(FAST)(State) <= 2.0


def test_write_once_resends_what_was_not_processed_and_looks_before_resending_the_rest():
    calls: list[str] = []
    looked: list[str] = []
    answers = [_failure(429), _failure(502), _response(201)]

    def send() -> httpx.Response:
        calls.append("send")
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def recover():
        looked.append("look")
        return None  # not there: resend

    response, found = write_once(send, recover, system="clarus", what="create goods out", policy=FAST)
    assert response.status_code == 201 and found is None
    assert calls == ["send"] * 3
    assert looked == ["look"]  # a 429 was never processed; only the 502 may have landed


def test_write_once_stops_when_the_write_had_landed():
    def send():
        raise _failure(504)

    response, found = write_once(send, lambda: {"id": "77"}, system="netsuite", what="create sales order", policy=FAST)
    assert response is None and found == {"id": "77"}


def test_write_once_gives_up_with_the_last_error():
    with pytest.raises(ConnectorError, match="502"):
        write_once(lambda: (_ for _ in ()).throw(_failure(502)), lambda: None, system="shopify", what="x", policy=FAST)


def test_reads_retry_transient_answers_on_the_same_engine():
    answers = iter([503, 429, 200])
    transport = httpx.MockTransport(lambda request: httpx.Response(next(answers), headers={"Retry-After": "0"}))
    with httpx.Client(transport=transport, base_url="https://example.test") as client:
        assert send_with_retries(client, "GET", "/api/things", system="clarus", policy=FAST).status_code == 200
