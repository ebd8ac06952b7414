"""Webhook intake: the receiver (verify, store durably, acknowledge), the landing zone and replay.

Public entry points:
- `clarus_pipelines.receiver.app.create_app(landing_dir, ...)` -> Starlette app
- `clarus_pipelines.receiver.app.Intake.accept(source, body, headers, ...)` -> Outcome
- `clarus_pipelines.receiver.landing.LandingZone(root)`: land, list, read, quarantine, prune
- `clarus_pipelines.receiver.auth`: signature checks and signing helpers (sandbox, tests)
- `clarus_pipelines.receiver.topics`: topics, dedupe identity, entity of a payload
- `clarus_pipelines.receiver.events`: the `landed_events` table for downstream flows
- `clarus_pipelines.receiver.reconcile`: what an API read-back has that no webhook brought
"""
