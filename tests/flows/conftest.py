"""The shared sandbox world of the flow tests (tests/world.py).

`world`: a local world per test (three sandboxes in this process, the real receiver, an empty
state); a test module sets its options in `WORLD_OPTIONS` (e.g. Shopify's webhooks on) and may name
a subclass with its flow's own helpers in `WORLD_CLASS`. A module
that needs the costlier trio (`World.trio`, the item master synced) opens it once at module scope
under its own fixture and gives each test `world.fork(tmp_path)`.
"""

from __future__ import annotations

import pytest

from world import World


@pytest.fixture
def world(request, tmp_path):
    kind = getattr(request.module, "WORLD_CLASS", World)
    w = kind.local(tmp_path, **getattr(request.module, "WORLD_OPTIONS", {}))
    yield w
    w.close()
