"""The brake as the API sees it: no request goes out while the API's pause is on, and a limit that goes down
(another runner now shares it) is learnt, not met by a 429 every second for as long as the runner runs."""

from __future__ import annotations

from collections import deque

from connector.http import Brake


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_pause_that_starts_while_a_worker_waits_for_its_slot_holds_that_worker_too() -> None:
    clock = _Clock()
    brake = Brake("API", max_per_second=10, clock=clock, sleep=lambda s: sleeping(s))
    pauses: list[float] = []

    def sleeping(seconds: float) -> None:
        # While this worker waits for its slot, another worker's request is answered 429 with Retry-After 5.
        if not pauses:
            pauses.append(clock.now)
            brake.pause(5.0)
        clock.sleep(seconds)

    brake.wait()  # worker 1 takes the first slot
    brake.wait()  # worker 2 waits for the next slot, ~0.1 s later; the 429 comes meanwhile
    assert pauses == [0.0]
    # The API said: nothing for 5 s. The request worker 2 sends now must not go out before that.
    assert clock.now >= 5.0, f"a request went out {clock.now:.3f} s in, inside the API's 5 s pause"


def _drive(brake: Brake, clock: _Clock, seconds: float, limit: int, throttled: list[float]) -> None:
    """Workers sending as fast as the brake lets them at an API that answers at most `limit` requests in any
    second (a sliding window), and 429 with Retry-After 1 beyond that."""
    answered: deque[float] = deque()
    end = clock.now + seconds
    while clock.now < end:
        brake.wait()
        while answered and answered[0] <= clock.now - 1.0:
            answered.popleft()
        if len(answered) >= limit:
            throttled.append(clock.now)
            brake.pause(1.0)
        else:
            answered.append(clock.now)
            brake.answered()
        clock.now += 0.001


def test_a_limit_that_goes_down_is_learnt_instead_of_met_every_second() -> None:
    clock = _Clock()
    brake = Brake("API", clock=clock, sleep=clock.sleep)
    throttled: list[float] = []
    _drive(brake, clock, 10.0, limit=40, throttled=throttled)  # alone: the brake learns about 40/s
    assert 37 <= brake.learnt <= 40
    # A second runner starts on the same API account: this one's share is now 20 a second.
    throttled.clear()
    start = clock.now
    _drive(brake, clock, 240.0, limit=20, throttled=throttled)
    last_minute = [t for t in throttled if t >= start + 180.0]
    # Learnt again (as a raised limit is, within a minute), the brake would meet no 429 in the fourth minute;
    # kept at 40/s, it meets one about every second and a half, each stalling every worker of the API.
    assert len(last_minute) <= 2, (f"{len(last_minute)} 429s in the fourth minute after the limit went down; "
                                   f"the brake still spaces requests at {brake.learnt:.1f}/s")
