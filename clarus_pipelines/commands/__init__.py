"""Command programs of the `clarus-pipelines` CLI that are not a server or a rehearsal.

Each module exposes `add_arguments(parser)` and `run(args) -> int`, like every command
that `clarus_pipelines.cli.COMMANDS` names. The rules they use live in the domain layer;
these modules only read arguments, files and settings, call the rules, and print.
"""
