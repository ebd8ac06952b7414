"""Processes seen through Linux /proc: a process's children, and whether one has exited."""

import time
from pathlib import Path


def child_pids(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


def exited(pid: int, within_s: float = 10.0) -> bool:
    """True when process `pid` exits within the time (a zombie counts: it ran to its end)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False
