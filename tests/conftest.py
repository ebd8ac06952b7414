"""Suite-wide set-up: test credentials in the environment, state under a temp home."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"

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


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"shared fixtures not found at {FIXTURES}: the repo must sit beside ../shared")
    return FIXTURES


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Each test gets its own state home unless it sets one itself."""
    monkeypatch.setenv("CLARUS_PIPELINES_HOME", str(tmp_path / "home"))
