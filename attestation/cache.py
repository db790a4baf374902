"""A small bounded, thread-safe LRU for verified certificate chains and collateral.

Verifiers key entries by a SHA-256 over every DER involved *and* the trust anchor they chained
to, and store what the next verification needs (parsed public key, validity window, decoded
extensions). Validity against ``now`` is re-checked on every hit: a cached entry says "this chain
is correctly signed", never "this chain is valid today".

:func:`der_of` memoises the DER of the pinned roots, which every cache key includes.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from typing import Generic, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    def __init__(self, maxsize: int = 1024) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be positive")
        self._maxsize = maxsize
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> V | None:
        with self._lock:
            try:
                value = self._data[key]
            except KeyError:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._maxsize:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)


@functools.lru_cache(maxsize=256)
def der_of(cert: x509.Certificate) -> bytes:
    """DER of a certificate, memoised: the pinned roots are encoded on every request."""
    return cert.public_bytes(serialization.Encoding.DER)
