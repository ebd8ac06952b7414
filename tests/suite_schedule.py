"""The order the suite's modules reach the xdist workers in (see `pytest_collection_modifyitems`)."""


def heaviest_modules_first(items: list) -> list:
    """Modules holding `slow` tests first, the longest time bound (the rehearsals) first among
    them; otherwise the collection order. The two workers (`-n 2 --dist loadscope`) take one
    module at a time, so the long ones start at once instead of one of them starting last.
    xdist keeps this order only with `--no-loadscope-reorder` (in addopts): by default it
    sorts modules by their number of tests, which put the one-test PostgreSQL rehearsal last."""
    def bound(item) -> float:
        marker = item.get_closest_marker("timeout")
        return float(marker.args[0]) if "slow" in item.keywords and marker and marker.args else 0.0

    weight: dict = {}
    for item in items:
        if "slow" in item.keywords:
            weight[item.path] = max(weight.get(item.path, 0.0), bound(item), 1.0)
    return sorted(items, key=lambda item: -weight.get(item.path, 0.0))  # stable: ties keep their order
