"""One careful HTTP client for vendor collateral services (httpx, async).

Vendors rate-limit (AMD KDS answers about one identical request per 10 s, else 429) and have
outages, and every coordinator of a deployment may ask at once. So, per :class:`Upstream`:

* single flight: concurrent requests for the same URL share one upstream request;
* at most ``retry.max_attempts`` requests per call, waiting ``retry.delay(attempt)`` between
  them (the policy is injected; :class:`ExponentialRetry` is the default);
* identical requests are spaced by at least ``min_interval`` seconds;
* 429 honours ``Retry-After`` (seconds or HTTP date): within ``max_retry_after`` it is waited
  out, beyond it the call fails at once and the host is left alone until then;
* 404 is final and remembered for ``not_found_ttl`` seconds (no retry, no repeat);
* 5xx, connection failures, time-outs (``timeout`` per read, ``deadline`` per request, so a
  slow drip cannot hold a caller) and truncated bodies are retried;
* bodies are bounded (``max_body``); a body shorter than its Content-Length is truncated.

Time comes from an injected monotonic ``clock`` and waiting from an injected ``sleep``, so tests
run the whole policy without waiting for real.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from attestation.collateral.errors import (
    UpstreamError,
    UpstreamFailed,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamResponseInvalid,
    UpstreamTimeout,
    UpstreamTruncated,
)
from attestation.collateral.metrics import CollateralMetrics

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

MAX_BODY = 1024 * 1024


class RetryPolicy(Protocol):
    """How long to wait before retry ``attempt`` (1-based) and how many requests at most."""

    @property
    def max_attempts(self) -> int: ...

    def delay(self, attempt: int) -> float: ...


@dataclass(frozen=True)
class ExponentialRetry:
    """``base * 2 ** (attempt - 1)`` seconds, at most ``cap``; deterministic (callers add jitter)."""

    base: float = 1.0
    cap: float = 30.0
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base or self.max_attempts < 1:
            raise ValueError("retry policy needs base > 0, cap >= base and max_attempts >= 1")

    def delay(self, attempt: int) -> float:
        return float(min(self.cap, self.base * 2 ** max(0, attempt - 1)))


@dataclass(frozen=True)
class Response:
    url: str
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names


def parse_retry_after(value: str | None, now_epoch: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date); None if absent."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now_epoch)


class Upstream:
    """GETs against one or more collateral services with the policy described above."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        retry: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        metrics: CollateralMetrics | None = None,
        max_body: int = MAX_BODY,
        deadline: float = 30.0,
        max_retry_after: float = 60.0,
        min_interval: float = 10.0,
        not_found_ttl: float = 600.0,
    ) -> None:
        self.client = client
        self.retry: RetryPolicy = retry or ExponentialRetry()
        self.sleep = sleep
        self.clock = clock
        self.wall_clock = wall_clock
        self.metrics = metrics
        self.max_body = max_body
        self.deadline = deadline
        self.max_retry_after = max_retry_after
        self.min_interval = min_interval
        self.not_found_ttl = not_found_ttl
        self.requests = 0  # upstream requests actually sent (for tests and logs)
        self._inflight: dict[str, asyncio.Future[Response]] = {}
        self._last_request: dict[str, float] = {}
        self._not_found: dict[str, float] = {}
        self._blocked_until: dict[str, float] = {}

    async def get(self, url: str, kind: str) -> Response:
        """The 200 response for ``url`` or the typed :class:`UpstreamError` of the last try."""
        pending = self._inflight.get(url)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._inflight[url] = future
        try:
            response = await self._get(url, kind)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: joiners re-raise it, nobody else must
            raise
        else:
            future.set_result(response)
            return response
        finally:
            del self._inflight[url]

    def _count(self, kind: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.fetch(kind, result)

    async def _get(self, url: str, kind: str) -> Response:
        host = urlsplit(url).netloc
        now = self.clock()
        blocked = self._blocked_until.get(host, 0.0)
        if now < blocked:
            self._count(kind, "rate_limited_local")
            raise UpstreamRateLimited(
                f"{host} asked us to wait {blocked - now:.0f} s more (Retry-After); not asking",
                blocked - now,
            )
        if now < self._not_found.get(url, 0.0):
            self._count(kind, "not_found_cached")
            raise UpstreamNotFound(f"{url}: 404 (remembered; not asking again yet)")
        last_error: UpstreamError | None = None
        for attempt in range(1, self.retry.max_attempts + 1):
            last = self._last_request.get(url)
            if last is not None:
                spacing = last + self.min_interval - self.clock()
                if spacing > 0:
                    await self.sleep(spacing)
            self._last_request[url] = self.clock()
            self.requests += 1
            wait: float | None = None
            try:
                response = await asyncio.wait_for(self._once(url), self.deadline)
            except TimeoutError:
                last_error = UpstreamTimeout(f"{url}: no complete response in {self.deadline} s")
            except UpstreamError as exc:
                last_error = exc
            else:
                status = response.status
                if status == 200:
                    self._count(kind, "ok")
                    return response
                if status == 404:
                    self._not_found[url] = self.clock() + self.not_found_ttl
                    last_error = UpstreamNotFound(f"{url}: 404 not found")
                elif status == 429:
                    after = parse_retry_after(
                        response.headers.get("retry-after"), self.wall_clock()
                    )
                    wait_for = after if after is not None else self.retry.delay(attempt)
                    self._blocked_until[host] = self.clock() + wait_for
                    last_error = UpstreamRateLimited(
                        f"{url}: 429 rate limited (Retry-After {after})", after
                    )
                    if wait_for > self.max_retry_after:
                        self._count(kind, last_error.reason)
                        raise last_error
                    wait = max(wait_for, self.retry.delay(attempt))
                elif 500 <= status < 600:
                    last_error = UpstreamFailed(f"{url}: HTTP {status}")
                else:
                    last_error = UpstreamRejected(f"{url}: HTTP {status}")
            assert last_error is not None
            self._count(kind, last_error.reason)
            if not last_error.retryable or attempt == self.retry.max_attempts:
                break
            pause = wait if wait is not None else self.retry.delay(attempt)
            spacing = self._last_request[url] + self.min_interval - self.clock()
            await self.sleep(max(pause, spacing))
        assert last_error is not None
        raise last_error

    async def _once(self, url: str) -> Response:
        try:
            async with self.client.stream("GET", url) as resp:
                chunks: list[bytes] = []
                size = 0
                if resp.status_code == 200:
                    async for chunk in resp.aiter_bytes():
                        size += len(chunk)
                        if size > self.max_body:
                            raise UpstreamResponseInvalid(
                                f"{url}: body larger than {self.max_body} bytes"
                            )
                        chunks.append(chunk)
                headers = {k.lower(): v for k, v in resp.headers.items()}
                return Response(url, resp.status_code, b"".join(chunks), headers)
        except httpx.TimeoutException:
            raise UpstreamTimeout(f"{url}: timed out") from None
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise UpstreamTruncated(f"{url}: connection closed mid-response ({exc})") from None
        except httpx.HTTPError as exc:
            raise UpstreamFailed(f"{url}: {type(exc).__name__}: {exc}") from None
