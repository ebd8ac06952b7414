"""End to end: the real Streamlit server on seeded state, driven by Debian's headless chromium.

Signs in with the shared secret, opens every page from the sidebar as a person would,
checks what is on screen and saves a screenshot of each page to tests/artifacts/.
Needs /usr/bin/chromium (scripts/install_browser.sh); set CLARUS_SKIP_BROWSER=1 to skip.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from audit_seed import AuditSeed, seed_audits
from dashboard_seed import SeedSummary, seed_state

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "dashboards" / "app.py"
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "correct horse battery staple"
STEP_TIMEOUT_MS = 20_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        if os.environ.get("CLARUS_SKIP_BROWSER") == "1":
            pytest.skip("CLARUS_SKIP_BROWSER=1 and /usr/bin/chromium is missing")
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install_browser.sh (or set CLARUS_SKIP_BROWSER=1 to skip)")
    return CHROMIUM


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> SeedSummary:
    return seed_state(tmp_path_factory.mktemp("browser") / "state.duckdb")


@pytest.fixture(scope="module")
def audits(seeded: SeedSummary) -> AuditSeed:
    """Two stored integration audits in the same state file, for the audit page."""
    return seed_audits(seeded.path)


@pytest.fixture(scope="module")
def dashboard_url(seeded: SeedSummary, audits: AuditSeed, tmp_path_factory) -> Iterator[str]:
    port = _free_port()
    log_path = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    env = {
        **os.environ,
        "CLARUS_PIPELINES_STATE_DB": str(seeded.path),
        "DASHBOARD_PASSWORD": PASSWORD,
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
             "--browser.gatherUsageStats", "false"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 45
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
            try:
                if httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not answer within 45 s:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def page(chromium: Path, dashboard_url: str):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1440, "height": 2200})
        tab = context.new_page()
        tab.set_default_timeout(STEP_TIMEOUT_MS)
        yield tab
        context.close()
        browser.close()


def _main(page):
    return page.locator('[data-testid="stMain"]')


def _open(page, link_text: str, heading: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_text(link_text, exact=True).click()
    _main(page).get_by_role("heading", name=heading, exact=True).wait_for()


def _screenshot(page, name: str) -> None:
    page.wait_for_timeout(300)  # let charts finish their first paint; correctness never depends on it
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def test_every_page_after_signing_in(page, dashboard_url: str, seeded: SeedSummary, audits: AuditSeed) -> None:
    from playwright.sync_api import expect

    page.goto(dashboard_url)
    password = page.get_by_label("Dashboard password")
    password.wait_for()
    _screenshot(page, "0-sign-in")
    password.fill("guess")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("Wrong password.")).to_be_visible()
    page.get_by_label("Dashboard password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()

    main = _main(page)
    main.get_by_role("heading", name="Health overview", exact=True).wait_for()
    expect(main.get_by_text("Open exceptions", exact=True)).to_be_visible()
    open_total = sum(seeded.open_by_owner.values())
    expect(main.locator('[data-testid="stMetric"]').filter(has_text="Open exceptions")).to_contain_text(str(open_total))
    expect(main.locator('[data-testid="stMetric"]').filter(has_text="Orders held")).to_contain_text(
        str(seeded.status_counts["HELD"]))
    expect(main.locator('[data-testid="stVegaLiteChart"]').first).to_be_visible()
    _screenshot(page, "1-health")

    _open(page, "Exception queue", "Exception queue")
    expect(main.get_by_label("Work on").locator("..")).to_be_visible()
    # the worst (past SLA, then severity, then age) is selected first and its runbook entry is shown
    expect(main.get_by_text("What it means for the business.").first).to_be_visible()
    expect(main.get_by_role("button", name="Resolve")).to_be_visible()
    _screenshot(page, "2-exceptions")

    _open(page, "Order journey", "Order journey")
    search = main.get_by_label("Find an order")
    search.fill(seeded.journey.tracking_number)
    search.press("Enter")
    main.get_by_role("heading", name=f"Order {seeded.journey.order_name}").wait_for()
    expect(main.get_by_text("Matched on tracking number")).to_be_visible()
    expect(main.locator('[data-testid="stMetric"]').filter(has_text="Clarus status")).to_contain_text("COMPLETED")
    ship_to = main.locator('[data-testid="stJson"]').last
    expect(ship_to).to_contain_text(f"{seeded.journey.customer_name[0]}***")  # the name, masked to its initial
    expect(ship_to).not_to_contain_text(seeded.journey.customer_name)
    steps = main.locator(".st-key-journey_steps")
    expect(steps).to_contain_text("ORDER_CREATED")
    expect(steps).to_contain_text("FULFILMENT_CONFIRMED")
    expect(steps).to_contain_text(seeded.journey.tracking_number)
    _screenshot(page, "3-journey")

    # a signed-in person may reveal personal data, explicitly
    page.locator('[data-testid="stSidebar"]').get_by_text("Show personal data").click()
    expect(main.locator('[data-testid="stJson"]').last).to_contain_text(seeded.journey.customer_name)

    _open(page, "Stock", "Stock")
    expect(main.locator('[data-testid="stMetric"]').filter(has_text="Stranded SKUs")).to_contain_text("1")
    expect(main.get_by_text(f"Not in the item master: {seeded.stranded_sku}")).to_be_visible()
    _screenshot(page, "4-stock")

    _open(page, "Reconciliation", "Reconciliation")
    expect(main.locator('[data-testid="stMetric"]').filter(has_text="Orders not reconciling")).to_contain_text("2")
    expect(main.get_by_role("button", name="Download CSV")).to_be_visible()
    _screenshot(page, "5-reconciliation")

    _open(page, "Integration audit", "Integration audit")
    expect(main.get_by_text("Go-live verdict: not ready: blockers")).to_be_visible()
    expect(main.locator('[data-testid="stMetric"]').filter(has_text="Blockers")).to_contain_text("1")
    expect(main.locator(".st-key-audit_findings")).to_be_visible()
    expect(main.get_by_role("button", name="HTML report")).to_be_visible()
    _screenshot(page, "6-audit")

    # the HTML report, as `clarus-pipelines audit --format html` writes it, renders on its own
    from clarus_pipelines.audit.render import to_html

    page.set_content(to_html(audits.latest))
    expect(page.get_by_role("heading", name="Integration audit")).to_be_visible()
    expect(page.locator("#verdict")).to_contain_text("not ready: blockers")
    expect(page.locator("#findings tr[data-check]")).to_have_count(len(audits.latest["findings"]))
    expect(page.locator('#findings tr[data-check="ship_methods.unmapped"]')).to_contain_text("ops")
    expect(page.locator("#trend")).to_contain_text("resolved: configuration.weak_secrets")
    _screenshot(page, "7-audit-report")
