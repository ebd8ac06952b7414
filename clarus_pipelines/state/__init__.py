from clarus_pipelines.state.pg import PgStateStore, pg_connect
from clarus_pipelines.state.store import LockTimeout, StateStore, migrate, open_state

__all__ = ["LockTimeout", "PgStateStore", "StateStore", "migrate", "open_state", "pg_connect"]
