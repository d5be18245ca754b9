"""Fixtures of the integration tier: the Dataverse sandbox over https, and a real client (real MSAL) for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from connector.dataverse.client import DataverseClient
from connector.sandbox.dataverse import DataverseSandbox
from tests.integration.dataverse_env import client_for, running_sandbox


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[DataverseSandbox]:
    """The Dataverse emulator with the default job table, state under tmp_path."""
    with running_sandbox(tmp_path) as sb:
        yield sb


@pytest.fixture
def client(sandbox: DataverseSandbox) -> Iterator[DataverseClient]:
    """A Dataverse client signed in to the sandbox with its credentials."""
    with client_for(sandbox) as c:
        yield c
