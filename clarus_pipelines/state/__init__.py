from clarus_pipelines.state.store import LockTimeout, StateStore, migrate

__all__ = ["LockTimeout", "StateStore", "migrate"]
