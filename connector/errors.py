"""One exception tree for everything that talks to an outside system.

    ConnectorError                    result_code, message, http_status
    ├── TransientError                retry later; may carry retry_after (seconds)
    │   ├── RateLimited               429: the API asked us to slow down
    │   ├── Unavailable               5xx the API will likely recover from
    │   ├── NetworkError              the request never reached the API (connect failure)
    │   └── OutcomeUnknown            the request was sent, the answer was lost (read timeout, reset)
    ├── PermanentError                retrying cannot help: fail now
    │   ├── InvalidInput              the request itself is wrong (400, validation)
    │   ├── NotFound                  contact / row / trigger does not exist
    │   ├── AuthError                 credentials refused, even after one token refresh
    │   └── Rejected                  the API understood and said no (417, opt-out, ...)
    ├── Conflict                      412: someone else changed the row first (a lost claim, not a failure)
    └── StoreError                    the job store's branch, drawn in `jobs/store/errors.py`

The runner only needs to know the branch: transient errors are retried with backoff, permanent ones fail the job
with their result code, a conflict is skipped. Result codes are short upper-case words that CRM users and support
staff see on the job.
"""

from __future__ import annotations


class ConnectorError(Exception):
    """The outside system failed."""

    result_code = "ERROR"

    def __init__(
        self,
        message: str | None = None,
        *,
        result_code: str | None = None,
        http_status: int | None = None,
    ) -> None:
        self.message = message or (self.__doc__ or "").strip()
        if result_code:
            self.result_code = result_code
        self.http_status = http_status
        super().__init__(self.message)


class TransientError(ConnectorError):
    """The outside system is temporarily unable to answer; trying again later may succeed."""

    result_code = "TRANSIENT"

    def __init__(
        self,
        message: str | None = None,
        *,
        result_code: str | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, result_code=result_code, http_status=http_status)
        self.retry_after = retry_after


class RateLimited(TransientError):
    """The API is throttling us (429)."""

    result_code = "RATE_LIMITED"


class Unavailable(TransientError):
    """The API answered with a temporary server error."""

    result_code = "UNAVAILABLE"


class NetworkError(TransientError):
    """The API could not be reached."""

    result_code = "NETWORK_ERROR"


class OutcomeUnknown(TransientError):
    """The request was sent but no answer came back, so it may or may not have been applied."""

    result_code = "OUTCOME_UNKNOWN"


class PermanentError(ConnectorError):
    """The outside system refused the request; retrying will not help."""

    result_code = "FAILED"


class InvalidInput(PermanentError):
    """The request was not valid."""

    result_code = "INVALID_INPUT"


class NotFound(PermanentError):
    """The record does not exist."""

    result_code = "NOT_FOUND"


class AuthError(PermanentError):
    """The credentials were refused."""

    result_code = "AUTH_FAILED"


class Rejected(PermanentError):
    """The API understood the request and declined it."""

    result_code = "REJECTED"


class Conflict(ConnectorError):
    """Someone else changed the record first (412 Precondition Failed)."""

    result_code = "CONFLICT"
