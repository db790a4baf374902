"""Store backends behind one protocol; :func:`open_store` turns a ``--store`` spec into one."""

from __future__ import annotations

from coordinator.store.base import Store
from coordinator.store.spec import StoreKind, StoreSpec, StoreSpecError, parse_store_spec

__all__ = ["StoreSpec", "StoreSpecError", "open_store", "parse_store_spec"]


async def open_store(
    spec: str | StoreSpec, deployment: str = "default", **etcd_options: object
) -> Store:
    """``file:DIR`` (embedded default) or ``etcd://HOST:PORT[,HOST:PORT]``.

    Concrete stores are imported here, on demand: ``join`` and the tools never load etcd.
    """
    parsed = parse_store_spec(spec) if isinstance(spec, str) else spec
    if parsed.kind is StoreKind.FILE:
        from coordinator.store.file import FileStore

        if etcd_options:
            raise StoreSpecError(f"--store {parsed}: etcd options given for a file store")
        assert parsed.directory is not None
        return FileStore.open(parsed.directory)
    from coordinator.store.etcd import EtcdStore

    return await EtcdStore.connect(
        list(parsed.endpoints),
        deployment,
        **etcd_options,  # type: ignore[arg-type]
    )
