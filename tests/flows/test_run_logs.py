"""Our modules' log lines reach each run's event log (issue 13 item 5), personal data masked."""

import logging
from pathlib import Path

import dagster as dg
import yaml

from clarus_pipelines.domain.dispatch import advance_all, advancing_lock
from clarus_pipelines.state import StateStore

REPO = Path(__file__).resolve().parents[2]


def test_a_domain_modules_log_line_is_in_the_runs_event_log_masked(tmp_path):
    import clarus_pipelines.definitions  # noqa: F401  (the code location masks our records)
    from clarus_pipelines.commands.demo import DAGSTER_PYTHON_LOGS_YAML, DEMO_DAGSTER_YAML

    deployed = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    assert deployed["python_logs"] == yaml.safe_load(DAGSTER_PYTHON_LOGS_YAML)["python_logs"]
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DEMO_DAGSTER_YAML)
    store = StateStore(tmp_path / "state.duckdb")

    @dg.op
    def advance_while_another_pass_runs() -> None:
        assert advance_all(store, None, None) == {"busy": 1}  # logs why it leaves the shipments alone
        logging.getLogger("clarus_pipelines.domain.dispatch").warning("customer %s wrote in", "ada@example.com")

    @dg.job
    def logs_job():
        advance_while_another_pass_runs()

    with dg.DagsterInstance.from_config(str(home)) as instance, advancing_lock(store) as mine:
        assert mine
        result = logs_job.execute_in_process(instance=instance)
        assert result.success
        lines = [(e.level, e.user_message) for e in instance.all_logs(result.run_id) if not e.is_dagster_event]
    assert (logging.INFO, "another run is advancing the dispatches; leaving them to it") in lines
    assert (logging.WARNING, "customer <email> wrote in") in lines
