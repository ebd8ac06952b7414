"""The wheel's package list covers the source tree (fast check; the wheel itself is tests/e2e/test_wheel.py).

pyproject.toml names every package because the repo's `assets/`, `sensors/`, `dashboards/`,
`quality/` and `config/` are mapped under `clarus_pipelines` with `package-dir`, which
setuptools' automatic discovery cannot follow. A new sub-package missing from that list
would be left out of the wheel: this test says which.
"""

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_python_folder_is_a_listed_package():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    folders = {name: REPO / folder for name, folder in config["package-dir"].items()}
    folders["clarus_pipelines"] = REPO / "clarus_pipelines"
    expected = set()
    for name, root in folders.items():
        for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
            if "__pycache__" in folder.parts or not any(folder.glob("*.py")):
                continue
            expected.add(".".join([name, *folder.relative_to(root).parts]))
    assert expected - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed <= expected | {"clarus_pipelines.quality", "clarus_pipelines.config"}


def test_nothing_outside_clarus_pipelines_is_packaged():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(name == "clarus_pipelines" or name.startswith("clarus_pipelines.") for name in config["packages"])
