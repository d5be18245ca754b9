"""Fixtures of the unit tier: a pooled session that never waits, and `responses` pinning every request."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import responses

from connector.http import ApiSession, Brake


@pytest.fixture
def session() -> Iterator[ApiSession]:
    """A Mautic session whose brake never waits (a 429's pause is asserted, not sat out)."""
    with ApiSession("Mautic", brake=Brake("Mautic", sleep=lambda _: None)) as api:
        yield api


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    """Every request pinned; a request the test registered but the code did not send fails the test."""
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        yield rsps
