"""The lanes select what they say: `./scripts/test -m unit` (the documented inner loop) runs the
unit folder, all of it and nothing else."""

import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_the_unit_marker_selects_exactly_the_unit_folder():
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "unit", "-n", "0",
                           "-p", "no:cacheprovider", str(TESTS)],
                          capture_output=True, text=True, timeout=240, cwd=TESTS.parent)
    selected = [line.split("::")[0] for line in done.stdout.splitlines() if "::" in line]
    in_folder = {str(p.relative_to(TESTS.parent)) for p in (TESTS / "unit").glob("test_*.py")}
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert selected and set(selected) == in_folder
