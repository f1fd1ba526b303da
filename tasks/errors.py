"""One exception tree for videosdk-recorder.

Bases end in ``Error``; the rest are named for the event they report. Every exception carries
structured fields, and :meth:`RecorderError.to_record` gives the ``{"type", "message"}`` shape that
job records store (never a pickled exception).
"""

from __future__ import annotations

from typing import Any, ClassVar

from tasks.logs import redact_url_credentials


class RecorderError(Exception):
    """Base of every error raised by videosdk-recorder."""

    error_type = "error"

    def to_record(self) -> dict[str, str]:
        """The JSON shape stored in a job record's ``error`` field."""
        return {"type": self.error_type, "message": str(self)}


class ValidationError(RecorderError, ValueError):
    """Raised when a producer passes a bad field; nothing is enqueued or stored."""

    error_type = "validation"

    def __init__(self, field: str, message: str, *, allowed: Any = None) -> None:
        self.field = field
        self.allowed = allowed
        text = f"{field}: {message}"
        if allowed is not None:
            text += f" (allowed: {allowed})"
        super().__init__(text)


class IdempotencyConflict(ValidationError):
    """Raised when an ``idempotency_key`` already names a job of another room, kind or body.

    Nothing is stored; ``job_id`` is the job the key names (as Stripe answers a reused key).
    """

    error_type = "idempotency_conflict"

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(
            "idempotency_key", f"already used by job {job_id} with a different room or body"
        )


class ConfigurationError(RecorderError):
    """Raised when a setting is missing or malformed (for example no VideoSDK secret)."""

    error_type = "configuration"


class JobNotFound(RecorderError, LookupError):
    """Raised when a job id names no stored record."""

    error_type = "not_found"

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job with id {job_id!r}")


class BrokerUnavailable(RecorderError):
    """Raised when Redis cannot be reached to store or publish a job; nothing is half-stored."""

    error_type = "broker_unavailable"


class ClaimFailed(RecorderError):
    """Raised when Redis did not take a delivery's claim of a job, even after retries.

    Nothing of the delivery is stored, so its message must go back to the queue, not be acked.
    """

    error_type = "claim_failed"

    def __init__(self, job_id: str, cause: BaseException) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id}: the claim failed ({type(cause).__name__}: {cause})")


class Deferred(RecorderError):
    """Raised when a job must wait longer than a worker slot may be held; it is handed back."""

    error_type = "deferred"

    def __init__(self, wait_s: float, reason: str) -> None:
        self.wait_s = wait_s
        self.reason = reason
        super().__init__(f"deferred {wait_s:.2f}s: {reason}")


class WindowClosed(RecorderError):
    """Raised inside a delivery when the job's start window has closed: no call is made."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"the start window of job {job_id} has closed")


class InvalidWebhookSignature(RecorderError, ValueError):
    """Raised when a webhook's ``videosdk-signature`` is missing or does not verify (HTTP 401)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"webhook refused: {reason}")


class InvalidWebhookBody(RecorderError, ValueError):
    """Raised when a verified webhook's body is not a JSON object (HTTP 400)."""


class WebhookTooLarge(RecorderError, ValueError):
    """Raised when a webhook's body is over the receiver's limit (HTTP 413)."""


class WebhookKeyUnavailable(RecorderError):
    """Raised when the webhook public key is not pinned and cannot be fetched (HTTP 503)."""


class ApiError(RecorderError):
    """Base of the outcomes of one call to the VideoSDK API that are not a plain success.

    ``http_status`` is None when no response arrived. ``may_have_started`` says whether the
    request may have reached the API and started the recording (a timeout after sending, a 5xx).
    """

    error_type = "api_error"
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        response: Any = None,
        retry_after_s: float | None = None,
        may_have_started: bool = False,
        latency_s: float | None = None,
    ) -> None:
        self.http_status = http_status
        self.latency_s = latency_s
        self.response = response
        self.retry_after_s = retry_after_s
        self.may_have_started = may_have_started
        super().__init__(message)


class CallTimedOut(ApiError):
    """Raised when the API did not answer within the read timeout (outcome unknown)."""

    error_type = "timeout"
    retryable = True


class ConnectionFailed(ApiError):
    """Raised when the API could not be reached, or the connection broke mid-call."""

    error_type = "connection_error"
    retryable = True


class RateLimited(ApiError):
    """Raised when the API answered 429; ``retry_after_s`` is its Retry-After, if any."""

    error_type = "rate_limited"
    retryable = True


class ServerFailed(ApiError):
    """Raised when the API answered 5xx (it may have started the recording all the same)."""

    error_type = "server_error"
    retryable = True


class TokenRejected(ApiError):
    """Raised when the API answered 401: the token is invalid or expired."""

    error_type = "unauthorized"
    retryable = True


class AlreadyRecording(ApiError):
    """Raised when the API refused the start because the room is already being recorded."""

    error_type = "already_recording"


class NotRecording(ApiError):
    """Raised when the API refused a stop because the room is not being recorded."""

    error_type = "not_recording"


class WindowRefusal(ApiError):
    """Base of refusals that are waited out while the job's start window is open.

    They do not use up ``RECORDER_MAX_ATTEMPTS``; see :mod:`tasks.window`.
    """


class NotLive(WindowRefusal):
    """Raised when the API refused the start because the room has no live session yet."""

    error_type = "not_live"


class PreviousSessionProcessing(WindowRefusal):
    """Raised when the API refused the start: the previous recording session is being processed.

    VideoSDK's "Previous recording session is being processed, please try again after few
    seconds" (error 4018).
    """

    error_type = "session_processing"


class RecordingLimitReached(WindowRefusal):
    """Raised when the API refused the start: the organisation's recording limit is reached.

    VideoSDK's "You have reached max limit of recording on organization" (error 4028).
    """

    error_type = "recording_limit"


class InternalError(ApiError):
    """Raised when an attempt failed on an unexpected exception (a bug, a library's surprise).

    Recorded as ``internal_error`` with the exception's type and message (URL credentials
    redacted), and retried like a 5xx: whether the request left is unknown, so an "already
    recording" answer later counts as success.
    """

    error_type = "internal_error"
    retryable = True
    MESSAGE_MAX_CHARS = 300

    @classmethod
    def wrapping(cls, exc: BaseException) -> InternalError:
        text = redact_url_credentials(f"{type(exc).__name__}: {exc}")
        return cls(text[: cls.MESSAGE_MAX_CHARS], may_have_started=True)


class RequestRefused(ApiError):
    """Raised when the API refused the request for good (400, 403, 404, 422, other 4xx)."""

    #: error type by HTTP status; any other 4xx is ``http_error``.
    TYPES: ClassVar[dict[int, str]] = {
        400: "invalid_params",
        403: "forbidden",
        404: "room_not_found",
        422: "invalid_object",
    }

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.error_type = self.TYPES.get(self.http_status or 0, "http_error")
