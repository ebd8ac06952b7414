"""The receiver benchmark's load generator builds its posts from a template of the order: each
post must still be a different order, correctly signed, that the receiver accepts as new."""

import importlib.util
import json
import sys
from pathlib import Path

from clarus_pipelines.receiver import auth
from clarus_pipelines.receiver.app import Intake, Refusal, WebhookSecrets

BENCH = Path(__file__).resolve().parents[2] / "bench" / "receiver.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_receiver", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _split(request: bytes) -> tuple[dict[str, str], bytes]:
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /webhooks/shopify HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Content-Length"]) == len(body)
    return headers, body


def test_each_post_is_the_order_with_its_own_id_name_and_signature():
    bench = _bench()
    order = json.loads(bench.FIXTURE.read_text())["order"]
    poster = bench.Poster(order, "run")
    intake = Intake(None, WebhookSecrets(shopify=bench.SECRET), None)  # check() writes nothing
    seen_keys = set()
    for n in (1, 2, 10, 12345):
        while poster.n < n:
            request = poster.next_request()
        headers, body = _split(request)
        payload = json.loads(body)
        assert payload["id"] == 9_000_000_000 + n and payload["name"] == f"#B{n}"
        assert {k: v for k, v in payload.items() if k not in ("id", "name")} == \
            {k: v for k, v in order.items() if k not in ("id", "name")}
        assert body == poster.body(n)
        assert headers["X-Shopify-Hmac-Sha256"] == auth.shopify_signature(body, bench.SECRET)
        assert headers["X-Shopify-Webhook-Id"] == f"run-{n}"
        verdict = intake.check("shopify", body, headers)  # names lower-cased by the check, as ASGI gives them
        assert not isinstance(verdict, Refusal), verdict
        assert verdict.topic == "orders/create"
        seen_keys.add(verdict.dedupe_key)
    assert len(seen_keys) == 4


def test_the_template_and_serialising_each_post_send_the_same_order():
    bench = _bench()
    order = json.loads(bench.FIXTURE.read_text())["order"]
    templated, serialised = bench.Poster(order, "a"), bench.Poster(order, "a", serialise_each=True)
    assert json.loads(templated.body(7)) == json.loads(serialised.body(7))
    # a name placed before the id in the order's keys is filled in as well
    reordered = {"name": "x", **{k: v for k, v in order.items() if k != "name"}}
    assert json.loads(bench.Poster(reordered, "b").body(3)) == {**reordered, "id": 9_000_000_003, "name": "#B3"}
