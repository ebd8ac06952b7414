"""Group commit in the file-landing receiver (issue 14 item 7): concurrent posts share flushes.

With the default syncfs flush, requests that arrive while a batch is being landed share
the next one (`receiver.groupcommit`, `LandingZone.land_many`). Each is still answered with
its own result, each event lands exactly once, and every acknowledged landing is a file
in the zone when its answer goes out.
"""

import json
from collections import Counter

from clarus_pipelines.receiver import auth
from clarus_pipelines.receiver.app import WebhookSecrets, create_app
from clarus_pipelines.receiver.landing import LandingZone
from clarus_pipelines.sandbox.serving import serve_in_thread
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies
from bursts import post_burst
from payloads import OURS

SECRET = "group-commit-files-secret"
SECRETS = WebhookSecrets(shopify=SECRET, clarus_token="clarus-url-token", netsuite="shh-netsuite")
TENANT = load_policies(SANDBOX_POLICIES).tenant


def test_concurrent_posts_each_event_lands_once_and_every_acknowledged_landing_is_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("CLARUS_PIPELINES_LANDING_SYNC", "syncfs")
    app = create_app(tmp_path / "landing", secrets=SECRETS, tenant=TENANT, state_url="")
    assert app.state.intake.group_commit is not None
    served = serve_in_thread(app)
    order = OURS.order("order_python_api")

    def post(n: int) -> tuple[str, bytes, dict]:
        webhook_id = f"file-{n % 32}"
        body = json.dumps({**order, "id": 8_000_000_000 + n % 32}).encode()
        return webhook_id, body, auth.shopify_headers(body, SECRET, topic="orders/create", webhook_id=webhook_id)

    try:
        answers = post_burst(served.url, senders=16, posts=96, make_post=post)
    finally:
        served.stop()
    assert len(answers) == 96 and {status for _, status, _ in answers} == {200}
    landed = Counter(w for w, _, doc in answers if doc["status"] == "landed")
    assert landed == Counter({f"file-{n}": 1 for n in range(32)}), "each event landed exactly once"
    zone = LandingZone(tmp_path / "landing")
    stored = {zone.read(ref).webhook_id: ref.landing_id for ref in zone.list_landings()}
    assert len(stored) == 32
    assert all(doc["landing_id"] == stored[w] for w, _, doc in answers), "every answer names the landing on disk"
    assert not list(zone.tmp_dir.iterdir())
