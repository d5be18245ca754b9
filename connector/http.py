"""The shared HTTP layer: one pooled session per API, timeouts, a brake per API, and error translation.

Every client in `connector` sends its requests through an `ApiSession`. It adds what every API call needs and no
client should repeat: a default timeout, a pool sized for the worker count, the API's `Brake` (a 429 from any
worker pauses all of them; an optional cap on requests per second), and the translation of `requests`
exceptions into our error tree. Mapping HTTP statuses to errors stays with each client, because each API words
its errors differently; `error_for_status` does the part they share.
"""

from __future__ import annotations

import email.utils
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from config import defaults
from connector import errors

log = logging.getLogger(__name__)

# The defaults' reasons are in config/defaults.py; settings override them.
CONNECT_TIMEOUT = defaults.CONNECT_TIMEOUT
READ_TIMEOUT = defaults.READ_TIMEOUT
RETRY_AFTER_CAP = defaults.RETRY_AFTER_CAP
DEFAULT_429_PAUSE = defaults.DEFAULT_429_PAUSE


def parse_retry_after(value: str | None, *, now: float | None = None, cap: float = RETRY_AFTER_CAP) -> float | None:
    """Seconds to wait from a Retry-After header given in seconds or as an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if _looks_like_date(value) else None
        if parsed is None:
            return None
        seconds = parsed.timestamp() - (time.time() if now is None else now)
    return max(0.0, min(seconds, cap))


def _looks_like_date(value: str) -> bool:
    try:
        email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return False
    return True


class Brake:
    """Shared by every worker that talks to one API.

    `pause(seconds)` (after a 429) makes every caller of `wait()` hold until the pause is over, so the workers do
    not each discover the limit by hitting it. `max_per_second`, when set, spaces requests out evenly, a little
    under the cap (`CAP_SHARE`). Without it, the rate answered in the second before a 429 is taken as the API's
    limit: requests are then spaced just under it, so that the workers do not burst into the next 429 when the
    pause ends, until a minute passes without a 429 that teaches one (see `LEARN_FROM` in config/defaults.py).

    A request may cost more than one slot (`wait(cost)`, `answered(count)`): a Dataverse `$batch` of N parts
    counts as N requests where the API may count it so. `budget()` takes the API's own count of what is left of
    its limit: while little is left, requests are spaced so that the rest lasts the API's window, which slows the
    workers down before a 429 rather than after it.
    """

    def __init__(
        self,
        name: str,
        *,
        max_per_second: float | None = None,
        max_pause: float = RETRY_AFTER_CAP,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = time.sleep,
        stop: threading.Event | None = None,
    ) -> None:
        self.name = name
        self.interval = 1.0 / (max_per_second * defaults.CAP_SHARE) if max_per_second else 0.0
        self.max_pause = max_pause
        self._clock = clock
        self._sleep = sleep
        self._stop = stop
        self._lock = threading.Lock()
        self._paused_until = 0.0
        # The last slot taken and how many requests it was for: the next one is that many intervals later, at
        # the interval that stands when it is taken, so a fresher reading of the API's budget counts at once.
        self._last_slot = float("-inf")
        self._last_cost = 0
        self.pauses = 0
        # When the requests of the last second were answered other than 429, and how many each counted for: the
        # rate a 429 is met at.
        self._answered: deque[tuple[float, int]] = deque()
        self._answered_count = 0
        # The rate learnt from a 429 (requests/s; 0: none) and when a 429 last taught it.
        self.learnt = 0.0
        self._last_429 = 0.0
        # The spacing the API's own count of what is left asks for (seconds per request; 0: none), and until when
        # that reading stands.
        self.budget_interval = 0.0
        self._budget_until = 0.0

    def pause(self, seconds: float) -> None:
        seconds = min(seconds, self.max_pause)
        with self._lock:
            now = self._clock()
            self._learn(now)
            until = now + seconds
            if until > self._paused_until:
                self._paused_until = until
                self.pauses += 1
                log.warning("%s asked us to slow down: all workers pause for %.1f s", self.name, seconds)

    def answered(self, count: int = 1) -> None:
        """A request that counted for `count` got an answer that was not a 429."""
        with self._lock:
            now = self._clock()
            self._answered.append((now, count))
            self._answered_count += count
            self._recent(now)

    def budget(self, left: float, *, share: float, window: float) -> None:
        """The API says `left` requests remain of its limit over a sliding window of `window` seconds, `share` of
        that limit. While the share is under `BUDGET_LOW`, requests are spaced `window / left` apart: then no
        more than `left` go out in the next window, whatever the window already holds, and as its old requests
        age out the API reports more left and the spacing eases. Below one request left, that is a pause of a
        whole window (at most `max_pause`)."""
        with self._lock:
            now = self._clock()
            if share >= defaults.BUDGET_LOW:
                self.budget_interval = 0.0
                return
            interval = min(window / max(left, 1.0), self.max_pause)
            if not self.budget_interval:
                log.info("%s has %.0f requests left of its limit (%.0f %%): requests are spaced %.2f s apart so "
                         "that they last its %g s window", self.name, max(left, 0.0), 100 * share, interval, window)
            self.budget_interval = interval
            # A reading older than the window says nothing about it any more.
            self._budget_until = now + window

    def _learn(self, now: float) -> None:
        rate = self._recent(now)
        if rate >= defaults.LEARN_FROM and rate >= defaults.LEARN_NEAR * self._rate(now) / defaults.LEARNT_SHARE:
            # Only a 429 that teaches keeps the rate: one at random must not hold on to a limit that has since
            # gone down (another runner sharing the API), or every later 429 would be met at the old rate.
            self.learnt, self._last_429 = rate * defaults.LEARNT_SHARE, now

    def _recent(self, now: float) -> int:
        """Requests answered in the last second."""
        while self._answered and self._answered[0][0] <= now - 1.0:
            self._answered_count -= self._answered.popleft()[1]
        return self._answered_count

    def _rate(self, now: float) -> float:
        """The rate learnt, while it stands (0 when none is)."""
        if self.learnt and now - self._last_429 > defaults.LEARNT_FORGET_AFTER:
            self.learnt = 0.0
        return self.learnt

    def _budgeted(self, now: float) -> float:
        """The spacing the API's count of what is left asks for, while its reading stands (0 when none does)."""
        if self.budget_interval and now > self._budget_until:
            self.budget_interval = 0.0
        return self.budget_interval

    def wait(self, cost: int = 1) -> None:
        """Holds the caller until its request may go out; `cost` is how many requests the API counts it for."""
        while True:
            with self._lock:
                now = self._clock()
                if now < self._paused_until:
                    delay, done = self._paused_until - now, False
                else:
                    # Take the next free slots; concurrent callers queue up behind each other.
                    rate = self._rate(now)
                    interval = max(self.interval, 1.0 / rate if rate else 0.0, self._budgeted(now))
                    slot = max(now, self._last_slot + interval * self._last_cost)
                    self._last_slot, self._last_cost = slot, cost
                    delay, done = slot - now, True
            if delay > 0:
                self._sleep(delay)
                if done:
                    # A 429 that came while this caller waited for its slot pauses it too.
                    with self._lock:
                        done = self._clock() >= self._paused_until
            if self._stop is not None and self._stop.is_set() and not done:
                # Shutting down: do not sit out the API's pause; the caller's job goes back to the queue.
                raise errors.RateLimited(f"{self.name} asked us to wait, and the connector is stopping.")
            if done:
                return


def error_for_status(
    response: requests.Response,
    message: str,
    *,
    code: str | None = None,
    not_found: type[errors.PermanentError] = errors.NotFound,
) -> errors.ConnectorError:
    """The branch of our tree for an HTTP error status. `message` is the API's own words, already extracted."""
    status = response.status_code
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    kwargs: dict[str, Any] = {"http_status": status}
    if code:
        kwargs["result_code"] = code
    if status == 429:
        return errors.RateLimited(message, retry_after=retry_after, **kwargs)
    if status in (500, 502, 503, 504):
        return errors.Unavailable(message, retry_after=retry_after, **kwargs)
    if status in (401, 403):
        return errors.AuthError(message, **kwargs)
    if status == 404:
        return not_found(message, **kwargs)
    if status == 409 or status == 412:
        return errors.Conflict(message, **kwargs)
    if status == 408:
        return errors.OutcomeUnknown(message, **kwargs)
    if 400 <= status < 500:
        return errors.InvalidInput(message, **kwargs)
    if status in (501, 505):
        # The API does not support what we asked: asking again will not change that.
        return errors.Rejected(message, **kwargs)
    return errors.Unavailable(message, retry_after=retry_after, **kwargs)


@contextmanager
def translate_exceptions(api: str) -> Iterator[None]:
    """Turn `requests` exceptions into our tree. Whether the request reached the API decides the branch."""
    try:
        yield
    except requests.exceptions.ConnectTimeout as exc:
        raise errors.NetworkError(f"{api} did not accept the connection in time.") from exc
    except requests.exceptions.ReadTimeout as exc:
        raise errors.OutcomeUnknown(f"{api} did not answer in time; the change may or may not have been made.") from exc
    except requests.exceptions.SSLError as exc:
        raise errors.NetworkError(f"{api}: TLS handshake failed ({type(exc.__cause__ or exc).__name__}).") from exc
    except requests.exceptions.ConnectionError as exc:
        if _never_sent(exc):
            raise errors.NetworkError(f"{api} could not be reached.") from exc
        raise errors.OutcomeUnknown(
            f"{api} dropped the connection before answering; the change may or may not have been made."
        ) from exc
    except requests.exceptions.RequestException as exc:
        raise errors.NetworkError(f"{api}: {type(exc).__name__}.") from exc


def _never_sent(exc: BaseException) -> bool:
    text = repr(exc)
    return any(s in text for s in ("NewConnectionError", "Connection refused", "NameResolutionError", "MaxRetryError"))


class ApiSession(requests.Session):
    """A pooled session for one API: default timeouts, its `Brake`, and errors translated at the boundary."""

    def __init__(
        self,
        api: str,
        *,
        pool_size: int = 8,
        timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
        brake: Brake | None = None,
    ) -> None:
        super().__init__()
        self.api = api
        self.timeout = timeout
        self.brake = brake or Brake(api)
        self.requests_sent = 0
        self.throttled = 0
        # Requests sent and not answered yet (as the API counts them, see `cost`): what an API's count of what is
        # left of its limit does not include yet.
        self.in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._environment: dict[tuple[str, str], Any] = {}
        adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def merge_environment_settings(self, url: str | bytes | None, proxies: Any, stream: Any, verify: Any,
                                   cert: Any) -> Any:
        """What the environment adds to a request (proxies, a CA bundle), looked up once per scheme and host:
        `requests` reads the environment and resolves proxy bypasses on every request, a cost each of the
        thousands of requests of a drain paid again for the same answer. A variable changed while the process
        runs is not seen."""
        if proxies or stream is not None or verify is not None or cert is not None or not isinstance(url, str):
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        key = urlsplit(url)[:2]
        found = self._environment.get(key)
        if found is None:
            found = self._environment[key] = super().merge_environment_settings(url, {}, None, None, None)
        return {**found, "proxies": dict(found["proxies"])}

    def request(self, method: str | bytes, url: str | bytes, *args: Any, cost: int = 1,
                **kwargs: Any) -> requests.Response:
        """As `requests.Session.request`; `cost` is how many requests the API counts this one for (the parts of
        a Dataverse `$batch`), in the brake's slots and in the rate it learns."""
        kwargs.setdefault("timeout", self.timeout)
        self.brake.wait(cost)
        self.requests_sent += 1
        with self._in_flight_lock:
            self.in_flight += cost
        try:
            with translate_exceptions(self.api):
                response = super().request(method, url, *args, **kwargs)
        finally:
            with self._in_flight_lock:
                self.in_flight -= cost
        if response.status_code != 429:
            self.brake.answered(cost)
        else:
            self.throttled += 1
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            # The API's Retry-After and no longer, also when it is 0 (or a date already past): a 429 at random is
            # not a rate limit, and each one stalls every worker of the API. Without one, a second.
            self.brake.pause(DEFAULT_429_PAUSE if retry_after is None else retry_after)
        return response


class Redactor(logging.Filter):
    """Replaces known secret values in log records, as a last line of defence behind not logging them at all."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        values = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(v) for v in values)) if values else None

    def redact(self, text: str) -> str:
        return self._pattern.sub("***", text) if self._pattern else text

    def filter(self, record: logging.LogRecord) -> bool:
        if self._pattern:
            record.msg = self.redact(record.getMessage())
            record.args = None
            if record.exc_info and not record.exc_text:
                # The formatter uses exc_text when it is set: a traceback is masked like the message.
                record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        return True
