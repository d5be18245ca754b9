"""The job store's branch of the error tree (`connector.errors` draws the rest):

    ConnectorError
    └── StoreError                    the job store could not do what was asked; the message says why
        ├── StoreUnavailable          busy or unreachable (also a TransientError): the same request may succeed later
        ├── JobNotFound               no job with that id
        ├── LeaseLost                 the claim on a job expired and someone else may hold it: the write was not made
        └── NotAllowed                the job's status does not allow this (cancelling a running job)
"""

from __future__ import annotations

from connector import errors


class StoreError(errors.ConnectorError):
    """The job store could not do what was asked."""

    result_code = "STORE_ERROR"


class StoreUnavailable(StoreError, errors.TransientError):
    """The job store is busy or cannot be reached; the same request may succeed later."""

    result_code = "STORE_UNAVAILABLE"


class JobNotFound(StoreError):
    result_code = "NOT_FOUND"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"No job with id {job_id!r}.")
        self.job_id = job_id


class LeaseLost(StoreError):
    """The runner's claim on a job expired and someone else may hold it now; the write was not made."""

    result_code = "LEASE_LOST"


class NotAllowed(StoreError):
    """The job is in a status that does not allow this (e.g. cancelling a running job)."""

    result_code = "NOT_ALLOWED"
