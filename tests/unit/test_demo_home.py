"""`demo` starts a fresh sandbox world each time: the last run's state must not follow it."""

from clarus_pipelines.commands.demo import fresh_world


def test_a_new_demo_moves_the_last_runs_state_aside_and_keeps_the_credentials(tmp_path):
    home = tmp_path / ".demo"
    (home / "landing" / "shopify").mkdir(parents=True)
    (home / "dagster_home").mkdir()
    (home / "logs").mkdir()
    (home / "state.duckdb").write_bytes(b"bindings to ids the old sandbox issued")
    (home / "logs" / "receiver.log").write_text("old")
    (home / "secrets.env").write_text("CLARUS_CLIENT_SECRET=kept\n")

    fresh_world(home)
    assert not (home / "state.duckdb").exists() and not (home / "landing").exists()
    assert not (home / "dagster_home").exists() and list((home / "logs").iterdir()) == []
    assert (home / "previous" / "state.duckdb").read_bytes() == b"bindings to ids the old sandbox issued"
    assert (home / "previous" / "logs" / "receiver.log").read_text() == "old"
    assert (home / "secrets.env").read_text() == "CLARUS_CLIENT_SECRET=kept\n"

    (home / "state.duckdb").write_bytes(b"second run")
    fresh_world(home)  # only the last run is kept
    assert (home / "previous" / "state.duckdb").read_bytes() == b"second run"
    assert not (home / "previous" / "landing").exists()


def test_a_first_demo_has_nothing_to_move(tmp_path):
    fresh_world(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_generated_secrets_read_back_and_a_shell_can_source_them(tmp_path):
    import subprocess

    from clarus_pipelines.commands.demo import SECRET_NAMES, load_or_create_secrets

    first = load_or_create_secrets(tmp_path)
    assert set(first) == set(SECRET_NAMES) and "\\n" in first["NETSUITE_PRIVATE_KEY"]
    assert load_or_create_secrets(tmp_path) == first  # kept, byte for byte, across runs

    shell = subprocess.run(
        ["bash", "-c", 'set -a; . "$1"; printf %s "$NETSUITE_PRIVATE_KEY"', "_", str(tmp_path / "secrets.env")],
        capture_output=True, text=True, check=True,
    )
    assert shell.stdout == first["NETSUITE_PRIVATE_KEY"] and shell.stderr == ""
