"""Data quality: the great-expectations suites in `quality/suites/` run against the state tables.

A suite is a JSON file: GX 1.x expectations (`type`, `kwargs`, `meta`, optional
`severity`) plus what to run them on: `query` (a DuckDB SELECT over the state
database; joins turn referential integrity into a column that must not be null),
`id_columns` (shown for each failing row), and `asset` (the Dagster asset the suite is
reported on, as an asset check). Kwargs may take `{"$PARAMETER": name}` from the
policies (`suite_parameters`): the SKU cleaning rule and the carriers' tracking
patterns, so the suites follow the configuration instead of copying it.

Two expectations are ours, registered with GX when a run starts:
`expect_column_values_to_be_valid_gtin` (GTIN-8/12/13/14 check digits, the same rule as
`domain.barcodes`) and `expect_tracking_numbers_to_fit_carrier` (carrier and tracking
number columns, checked by `domain.tracking.TrackingRules`).

Tables are read in one shared read of the state file, the connection is closed, and the
suites are validated in memory with an ephemeral GX context (pandas), so validation never
holds the state lock. great_expectations is imported on first use only: it takes seconds
to import and the Dagster code location should not pay for it at load time.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from clarus_pipelines.logs import mask_pii
from clarus_pipelines.policies import Policies
from clarus_pipelines.settings import package_file

log = logging.getLogger(__name__)

SUITES_DIR = package_file("clarus_pipelines.quality", "suites")  # the repo's quality/suites/, shipped in the wheel
OUR_KEYS = ("name", "description", "asset", "query", "id_columns", "expectations")


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    asset: str
    query: str
    id_columns: tuple[str, ...]
    expectations: tuple[dict[str, Any], ...]
    path: Path | None = None

    @property
    def check_name(self) -> str:
        return f"quality_{self.name}"


def load_suite(path: Path) -> Suite:
    raw = json.loads(path.read_text(encoding="utf-8"))
    missing = [k for k in ("name", "asset", "query", "expectations") if not raw.get(k)]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}")
    unknown = sorted(set(raw) - set(OUR_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}")
    if not raw["query"].lstrip().upper().startswith(("SELECT", "WITH")):
        raise ValueError(f"{path}: query must be a SELECT")
    return Suite(raw["name"], raw.get("description", ""), raw["asset"], raw["query"], tuple(raw.get("id_columns") or ()),
                 tuple(raw["expectations"]), path)


def load_suites(directory: Path | str = SUITES_DIR) -> list[Suite]:
    """Every suite in the directory, by file name; names must be unique."""
    suites = [load_suite(p) for p in sorted(Path(directory).glob("*.json"))]
    names = [s.name for s in suites]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"suite names used twice in {directory}: {duplicated}")
    return suites


def suite_parameters(policies: Policies) -> dict[str, Any]:
    """Values for the suites' `$PARAMETER`s, from the policies."""
    case = policies.sku_cleaning.case
    return {
        "sku_invalid_characters": policies.sku_cleaning.remove_pattern,
        "sku_wrong_case": "[a-z]" if case == "upper" else "[A-Z]" if case == "lower" else "(?!)",
        "tracking_patterns": dict(policies.tracking_patterns),
    }


# ----------------------------------------------------------------------- GX expectations

_registered = threading.Lock()
_done = False


def register_expectations() -> None:
    """Define our two custom expectations (GX registers a class when it is created)."""
    global _done
    with _registered:
        if _done:
            return
        import pandas as pd
        from great_expectations.execution_engine import PandasExecutionEngine
        from great_expectations.expectations.expectation import ColumnMapExpectation, ColumnPairMapExpectation
        from great_expectations.expectations.metrics import ColumnMapMetricProvider, column_condition_partial
        from great_expectations.expectations.metrics.map_metric_provider import (
            ColumnPairMapMetricProvider,
            column_pair_condition_partial,
        )

        from clarus_pipelines.domain.barcodes import is_valid_gtin
        from clarus_pipelines.domain.tracking import TrackingRules

        class ColumnValuesValidGtin(ColumnMapMetricProvider):
            condition_metric_name = "column_values.valid_gtin"

            @column_condition_partial(engine=PandasExecutionEngine)
            def _pandas(cls, column, **kwargs):
                return column.map(lambda value: is_valid_gtin(str(value)))

        class ExpectColumnValuesToBeValidGtin(ColumnMapExpectation):
            """Each value is a GTIN-8/12/13/14 with a correct check digit."""

            map_metric = "column_values.valid_gtin"
            success_keys = ("mostly",)

        class ColumnPairValuesValidTracking(ColumnPairMapMetricProvider):
            condition_metric_name = "column_pair_values.valid_tracking"
            condition_domain_keys = ("column_A", "column_B", "ignore_row_if")
            condition_value_keys = ("patterns",)

            @column_pair_condition_partial(engine=PandasExecutionEngine)
            def _pandas(cls, column_A, column_B, patterns=None, **kwargs):
                rules = TrackingRules(patterns or {})
                return pd.Series(
                    [rules.check(carrier, number).ok for carrier, number in zip(column_A, column_B)], index=column_A.index
                )

        class ExpectTrackingNumbersToFitCarrier(ColumnPairMapExpectation):
            """column_A names the carrier, column_B holds its tracking number: the number fits one
            of the carrier's formats (with its check digit). Unknown carriers are not judged."""

            map_metric = "column_pair_values.valid_tracking"
            patterns: dict = {}
            ignore_row_if: str = "either_value_is_missing"
            success_keys = ("patterns", "mostly", "ignore_row_if")

        _done = True


# --------------------------------------------------------------------------------- run


@dataclass
class ExpectationOutcome:
    type: str
    rule: str
    columns: list[str]
    success: bool
    severity: str
    element_count: int | None = None
    unexpected_count: int | None = None
    sample: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, [])}


@dataclass
class SuiteResult:
    suite: Suite
    rows_checked: int
    outcomes: list[ExpectationOutcome]
    error: str | None = None  # the query itself failed

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    @property
    def success(self) -> bool:
        return self.error is None and not self.failed

    @property
    def critical(self) -> bool:
        """A failure that should block: a critical expectation failed, or the suite could not run."""
        return self.error is not None or any(o.severity == "critical" for o in self.failed)

    def failing_sample(self, limit: int = 20) -> list[dict[str, Any]]:
        """Failing rows across expectations, each with the rule it broke."""
        rows = []
        for outcome in self.failed:
            for row in outcome.sample:
                rows.append({"rule": outcome.rule, **row})
        return rows[:limit]

    def summary(self) -> str:
        if self.error:
            return f"{self.suite.name}: could not run: {self.error}"
        if not self.failed:
            return f"{self.suite.name}: {len(self.outcomes)} expectations met on {self.rows_checked} rows"
        parts = [f"{o.rule} ({o.unexpected_count if o.unexpected_count is not None else '?'} rows)" for o in self.failed]
        return f"{self.suite.name}: {len(self.failed)} of {len(self.outcomes)} expectations failed: " + "; ".join(parts)


def _plain(value: Any) -> Any:
    """JSON-able plain value (numpy scalars, NaN -> None, timestamps -> text)."""
    try:
        import math

        if isinstance(value, float) and math.isnan(value):
            return None
    except TypeError:
        pass
    if hasattr(value, "item") and callable(value.item):
        try:
            return _plain(value.item())
        except (ValueError, TypeError):
            pass
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _columns(kwargs: dict[str, Any]) -> list[str]:
    cols = [kwargs[k] for k in ("column", "column_A", "column_B") if isinstance(kwargs.get(k), str)]
    return cols + list(kwargs.get("column_list") or [])


def read_tables(con: duckdb.DuckDBPyConnection, suites: Sequence[Suite]) -> dict[str, Any]:
    """Each suite's rows as a pandas frame (or the error text when its query fails)."""
    frames: dict[str, Any] = {}
    for suite in suites:
        try:
            con.complete()
            frames[suite.name] = con.sql(suite.query).df()
        except duckdb.Error as exc:
            frames[suite.name] = f"{type(exc).__name__}: {exc}"
    return frames


def validate(
    suites: Sequence[Suite], frames: dict[str, Any], parameters: dict[str, Any], *, sample_size: int = 10
) -> list[SuiteResult]:
    """Run each suite on its frame with an ephemeral GX context."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    register_expectations()
    context = gx.get_context(mode="ephemeral", project_config=DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        progress_bars=ProgressBarsConfig(globally=False),
    ))
    source = context.data_sources.add_pandas("state")
    results: list[SuiteResult] = []
    for suite in suites:
        frame = frames.get(suite.name)
        if isinstance(frame, str) or frame is None:
            results.append(SuiteResult(suite, 0, [], error=frame or "no data read"))
            continue
        batch_definition = source.add_dataframe_asset(suite.name).add_batch_definition_whole_dataframe("all")
        gx_suite = context.suites.add(gx.ExpectationSuite(
            name=suite.name,
            expectations=[{**e, "meta": {**(e.get("meta") or {}), "suite_index": i}} for i, e in enumerate(suite.expectations)],
            meta={"description": suite.description},
        ))
        batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
        id_columns = [c for c in suite.id_columns if c in frame.columns]
        validation = batch.validate(
            gx_suite,
            result_format={"result_format": "SUMMARY", "unexpected_index_column_names": id_columns,
                           "partial_unexpected_count": sample_size},
            expectation_parameters=parameters,
        )
        outcomes = []
        for spec, result in zip(suite.expectations, _in_suite_order(suite, validation.results)):
            config = result.expectation_config
            info = result.exception_info or {}
            error = info.get("exception_message") if info.get("raised_exception") else None
            if error is None:  # GX nests metric errors one level down
                nested = [v for v in info.values() if isinstance(v, dict) and v.get("raised_exception")]
                error = nested[0].get("exception_message") if nested else None
            details = result.result or {}
            sample = [{k: _plain(v) for k, v in row.items()} for row in details.get("partial_unexpected_index_list") or []]
            outcomes.append(ExpectationOutcome(
                type=config.type,
                rule=(spec.get("meta") or {}).get("rule") or f"{config.type} {', '.join(_columns(spec.get('kwargs') or {}))}",
                columns=_columns(spec.get("kwargs") or {}),
                success=bool(result.success) and error is None,
                severity=str(spec.get("severity") or "critical"),
                element_count=details.get("element_count"),
                unexpected_count=details.get("unexpected_count"),
                sample=mask_pii(sample[:sample_size]),
                error=error,
            ))
        results.append(SuiteResult(suite, len(frame), outcomes))
    return results


def _in_suite_order(suite: Suite, results: list[Any]) -> list[Any]:
    """GX returns results in its own order; put them back in the suite's (by the index in meta)."""
    by_index = {(r.expectation_config.meta or {}).get("suite_index"): r for r in results}
    missing = [i for i in range(len(suite.expectations)) if i not in by_index]
    if missing:
        raise RuntimeError(f"suite {suite.name}: no result for expectation(s) {missing}")
    return [by_index[i] for i in range(len(suite.expectations))]


def run_suites(
    con: duckdb.DuckDBPyConnection, suites: Sequence[Suite], policies: Policies, *, sample_size: int = 10
) -> list[SuiteResult]:
    """Read and validate in one go. The caller holds `con` for the whole validation: prefer
    `read_tables` under the lock, then `validate` after releasing it (as the Dagster check does)."""
    return validate(suites, read_tables(con, suites), suite_parameters(policies), sample_size=sample_size)


def record_results(con: duckdb.DuckDBPyConnection, results: Sequence[SuiteResult], *, run_at: datetime,
                   run_id: str | None = None) -> None:
    con.executemany(
        "INSERT OR REPLACE INTO data_quality_results (run_at, suite, success, rows_checked, expectations, failed, results,"
        " run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (run_at, r.suite.name, r.success, r.rows_checked, len(r.outcomes), len(r.failed),
             json.dumps({"error": r.error, "expectations": [o.as_dict() for o in r.outcomes]}, default=str), run_id)
            for r in results
        ],
    )


def latest_results(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """The last result of each suite (for the dashboard)."""
    cur = con.execute(
        "SELECT suite, run_at, success, rows_checked, expectations, failed, results::VARCHAR AS results"
        " FROM data_quality_results QUALIFY row_number() OVER (PARTITION BY suite ORDER BY run_at DESC) = 1 ORDER BY suite"
    )
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r)) for r in cur.fetchall()]
    for row in rows:
        row["results"] = json.loads(row["results"])
    return rows
