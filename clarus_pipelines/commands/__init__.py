"""The command programs of the `clarus-pipelines` CLI, one module per command (servers and rehearsals too).

Each module exposes `add_arguments(parser)` and `run(args) -> int`, like every command
that `clarus_pipelines.cli.COMMANDS` names. The rules and libraries they use live in the
layers below; these modules only read arguments, files and settings, call them, and print.
Nothing outside `cli.py` and this package parses arguments (tests/unit/test_layers.py).
"""
