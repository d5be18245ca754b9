"""The e2e tier runs most commands in the pytest process: each must leave that process as it found it."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator

import pytest

from connector.http import Redactor


def _process_state() -> tuple[object, ...]:
    root = logging.getLogger()
    ours = [h for h in root.handlers if type(h) is logging.StreamHandler]  # pytest's handlers are subclasses
    redacting = [h for h in root.handlers if any(isinstance(f, Redactor) for f in h.filters)]
    return root.level, ours, redacting, signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)


@pytest.fixture(autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """No log handler, log level, redaction filter or signal handler of a command outlives it."""
    before = _process_state()
    yield
    assert _process_state() == before
