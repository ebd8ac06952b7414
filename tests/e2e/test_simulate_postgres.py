"""The heavy-fault sale day, 200 orders, on PostgreSQL state (issues 14 and 17): its own module so
that the suite's two workers run it beside the embedded-DuckDB rehearsal, not after it."""

import pytest

from pgstate import fresh_database
from rehearsal import assert_the_sale_went_through, rehearse

from clarus_pipelines.state.pg import pg_connect

SALE_DAY_ORDERS = 200


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_two_hundred_order_sale_day_with_heavy_faults_on_postgresql_state(tmp_path):
    """`simulate --orders 200 --faults heavy --state-url postgresql://...`: the receiver stores every
    webhook in the PostgreSQL inbox, the runs keep their state in PostgreSQL, and the report counts
    from it; lost 0, duplicated 0, misordered 0."""
    with fresh_database("clarus_simulate") as url:
        report = rehearse(tmp_path, orders=SALE_DAY_ORDERS, seed=7, timeout_s=780, state_url=url)
        raw = pg_connect(url)
        try:
            with raw.cursor() as cur:
                cur.execute("SELECT count(*) FROM webhook_inbox")
                inbox = cur.fetchone()[0]
                cur.execute("SELECT count(*) FROM orders")
                orders = cur.fetchone()[0]
        finally:
            raw.close()
    assert inbox > SALE_DAY_ORDERS and orders >= SALE_DAY_ORDERS * 0.9  # webhooks went to the inbox, orders to PostgreSQL
    assert not (tmp_path / "rehearsal" / "state.duckdb").exists()  # and no DuckDB state was made beside it
    assert_the_sale_went_through(report, SALE_DAY_ORDERS)
