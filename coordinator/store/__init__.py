"""Store backends behind one protocol; :func:`open_store` turns a ``--store`` spec into one."""

from __future__ import annotations

from coordinator.store.base import Store, StoreError


class StoreSpecError(StoreError, ValueError):
    pass


async def open_store(spec: str, deployment: str = "default", **etcd_options: object) -> Store:
    """``file:DIR`` (embedded default), ``memory:`` (tests) or ``etcd://HOST:PORT[,HOST:PORT]``."""
    if spec.startswith("file:") and len(spec) > len("file:"):
        from coordinator.store.file import FileStore

        return FileStore.open(spec[len("file:") :])
    if spec == "memory:":
        from coordinator.store.memory import MemoryStore

        return MemoryStore()
    if spec.startswith("etcd://") and len(spec) > len("etcd://"):
        from coordinator.store.etcd import EtcdStore

        endpoints = [e for e in spec[len("etcd://") :].split(",") if e]
        return await EtcdStore.connect(endpoints, deployment, **etcd_options)  # type: ignore[arg-type]
    raise StoreSpecError(
        f"--store must be file:DIR, memory: or etcd://HOST:PORT[,...], got {spec!r}"
    )
