"""Streamlit's AppTest, run once more when CPython 3.11 trips over its own AST recursion counter.

CPython 3.11 (gh-106905) can fail `compile()` of an AST in a thread with "AST constructor
recursion depth mismatch" at random; Streamlit compiles each page script that way. That
exception comes from the interpreter, not from our pages, so a run that fails with exactly it
is run again once; any other exception stays the test's to see.
"""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

CPYTHON_AST_BUG = "AST constructor recursion depth mismatch"


def run_app(script: str, *, default_timeout: float = 30) -> AppTest:
    at = AppTest.from_file(script, default_timeout=default_timeout).run()
    if any(CPYTHON_AST_BUG in (e.message or "") for e in at.exception):
        at = AppTest.from_file(script, default_timeout=default_timeout).run()
    return at
