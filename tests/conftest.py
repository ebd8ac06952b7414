"""Suite-wide set-up: test credentials in the environment, state under a temp home, and the
sample payloads (ours always; the published ones in the `realpayloads` lane where present)."""

import os

import pytest

from payloads import OURS, PUBLISHED, SKIP_REASON, Payloads
from suite_schedule import heaviest_modules_first

TEST_SECRETS = {
    "CLARUS_CLIENT_ID": "test-clarus-client",
    "CLARUS_CLIENT_SECRET": "test-clarus-secret",
    "CLARUS_WEBHOOK_TOKEN": "test-clarus-webhook-token",
    "SHOPIFY_ACCESS_TOKEN": "test-shopify-token",
    "SHOPIFY_WEBHOOK_SECRET": "test-shopify-webhook-secret",
    "NETSUITE_CONSUMER_KEY": "test-ns-consumer-key",
    "NETSUITE_CONSUMER_SECRET": "test-ns-consumer-secret",
    "NETSUITE_TOKEN_ID": "test-ns-token-id",
    "NETSUITE_TOKEN_SECRET": "test-ns-token-secret",
    "NETSUITE_WEBHOOK_SECRET": "test-netsuite-webhook-secret",
}


def pytest_configure(config):
    for key, value in TEST_SECRETS.items():
        os.environ.setdefault(key, value)
    # Nothing defaults to the sandbox tenant any more (issue 14): the tests choose it explicitly.
    from clarus_pipelines.settings import POLICIES_ENV, SANDBOX_POLICIES

    os.environ.setdefault(POLICIES_ENV, str(SANDBOX_POLICIES))


LANES = ("unit", "flows", "e2e")  # tests/<lane>/: pure rules; sandbox and materialize; HTTP, browser, PostgreSQL, rehearsals


def pytest_itemcollected(item):
    """Each test carries its lane's marker (from its folder), in time for `-m unit` to select by
    it. Without ../shared/fixtures the realpayloads lane is skipped, saying where it looked."""
    lane = item.path.parent.name
    if lane in LANES:
        item.add_marker(getattr(pytest.mark, lane))
    if not PUBLISHED.available and "realpayloads" in item.keywords:
        item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


@pytest.hookimpl(trylast=True)  # after pytest's own reordering by parametrized fixtures
def pytest_collection_modifyitems(config, items):
    """Modules with `slow` tests go first."""
    items[:] = heaviest_modules_first(items)


@pytest.fixture(scope="session", params=[OURS, pytest.param(PUBLISHED, marks=pytest.mark.realpayloads)],
                ids=["ours", "published"])
def payloads(request) -> Payloads:
    """The test runs on our own sample payloads and, in the realpayloads lane, on the published ones."""
    return request.param


@pytest.fixture(scope="session")
def published() -> Payloads:
    """Only the published payloads (mark the test `realpayloads`)."""
    return PUBLISHED


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Each test gets its own state home unless it sets one itself."""
    monkeypatch.setenv("CLARUS_PIPELINES_HOME", str(tmp_path / "home"))


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def state_target(request, tmp_path):
    """Where a test's integration state lives, once per backend: a DuckDB file path, or the
    URL of a fresh PostgreSQL database (dropped after the test)."""
    if request.param == "duckdb":
        yield str(tmp_path / "state.duckdb")
        return
    from pgstate import fresh_database

    with fresh_database() as url:
        yield url
