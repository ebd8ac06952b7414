"""The API version policy (docs/api-versions.md): the pin is supported, the declaration is current."""

from __future__ import annotations

from datetime import date

import pytest

from clarus_pipelines.connectors.shopify import API_VERSION, ShopifyResource
from clarus_pipelines.sandbox.shopify_graphql import SCHEMA_PATH, SCHEMA_VERSION
from clarus_pipelines.settings import SHOPIFY_API_VERSION, SHOPIFY_OLDEST_SUPPORTED_VERSION, Settings


def supported_until(version: str) -> date:
    """Shopify supports a stable version for at least 12 months from its release."""
    year, month = (int(part) for part in version.split("-"))
    return date(year + 1, month, 1)


def test_pinned_shopify_version_is_not_older_than_the_oldest_supported():
    assert SHOPIFY_API_VERSION >= SHOPIFY_OLDEST_SUPPORTED_VERSION
    assert Settings().shopify_api_version >= SHOPIFY_OLDEST_SUPPORTED_VERSION


def test_declared_oldest_supported_version_is_still_in_shopifys_window():
    assert date.today() < supported_until(SHOPIFY_OLDEST_SUPPORTED_VERSION), (
        f"Shopify no longer supports {SHOPIFY_OLDEST_SUPPORTED_VERSION}: move the versions (docs/api-versions.md)")
    assert date.today() < supported_until(SHOPIFY_API_VERSION)


def test_connector_settings_and_sandbox_schema_pin_one_version():
    assert API_VERSION == SHOPIFY_API_VERSION == SCHEMA_VERSION
    assert ShopifyResource(base_url="http://x", access_token="t").api_version == SHOPIFY_API_VERSION
    assert SCHEMA_PATH.is_file()


def test_an_older_version_than_supported_is_refused_by_the_settings(monkeypatch):
    monkeypatch.setenv("SHOPIFY_API_VERSION", "2025-07")
    with pytest.raises(ValueError, match="older than the oldest supported"):
        Settings()
