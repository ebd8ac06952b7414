"""How commands answer: one JSON object on stdout, success or failure; messages on stderr.

Exit codes, the same for every command:

| code | meaning |
| --- | --- |
| 0 | done, nothing wrong found |
| 1 | done, and it found problems (invalid config, failed replays, blockers, stalled intake...) |
| 2 | could not run: bad arguments, unreadable input, missing settings |
"""

from __future__ import annotations

import json
import sys
from typing import Any

OK, FOUND_PROBLEMS, CANNOT_RUN = 0, 1, 2


def emit(document: dict[str, Any], *, indent: int | None = 2) -> None:
    """Print the command's JSON answer on stdout."""
    json.dump(document, sys.stdout, indent=indent, ensure_ascii=False, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


def fail(command: str, message: str, *, code: int = CANNOT_RUN, indent: int | None = 2, **fields: Any) -> int:
    """Say why on stderr and answer `{"ok": false, "error": ..., **fields}` on stdout; return `code`."""
    print(f"{command}: {message}", file=sys.stderr)
    emit({"ok": False, "error": message, **fields}, indent=indent)
    return code
