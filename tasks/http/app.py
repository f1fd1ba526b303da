"""The HTTP API (FastAPI on uvicorn: ``recorder serve``), routes fixed by the contract.

Every route but the webhook needs ``Authorization: Bearer <token>`` (:mod:`.auth`), else 401.
JSON in and out; a job is ``Job.to_dict()``. OpenAPI docs at ``/docs``, their Swagger UI files
served by the app itself (fastapi-offline), so they work with no internet.

- ``POST /v1/recordings`` ``{"room_id", and the enqueue options by their Python names}`` → 201
  the job; invalid input → 422 naming the field (nothing stored); an ``IdempotencyConflict`` →
  409; Redis down → 503.
- ``GET /v1/recordings/{job_id}`` → 200 the job, 404 unknown.
- ``GET /v1/recordings?room_id=&status=&limit=`` → 200 ``{"jobs": [...]}``, newest first.
- ``POST /v1/recordings/{job_id}/cancel`` → 200 the job (unchanged if it had started), 404.
- ``POST /v1/stops`` ``{"room_id", "run_at"?, "idempotency_key"?}`` → 201 the stop job.
- ``POST /webhooks/videosdk``: the webhook receiver (its signature, not a bearer token).

Bodies over :data:`BODY_MAX_BYTES` are refused with 413 from their ``Content-Length``, or as
soon as more has arrived, never read whole (the webhook's own limit is 1 MiB). No answer ever
carries a secret: jobs hold none, and errors are our own one-line messages.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.routing import Route

from tasks import api
from tasks.errors import BrokerUnavailable, IdempotencyConflict, JobNotFound, ValidationError
from tasks.http.auth import bearer_token, token_ok
from tasks.request import RECORDING_OPTIONS
from tasks.runtime import config
from tasks.webhooks.app import PATH as WEBHOOK_PATH
from tasks.webhooks.app import read_limited, webhook_endpoint

#: the largest request body of the /v1 routes (a job's options are well under a kilobyte)
BODY_MAX_BYTES = 64 * 1024
#: the options ``POST /v1/recordings`` takes, by their Python names (``enqueue_recording``'s)
STOP_FIELDS = frozenset({"run_at", "idempotency_key", "notify_task"})
ENQUEUE_FIELDS = frozenset(RECORDING_OPTIONS) | STOP_FIELDS | {"start_window_s", "max_duration_s"}
QUERY_FIELDS = frozenset({"room_id", "status", "limit"})


def require_token(authorization: str | None = Header(default=None)) -> None:
    """The bearer token dependency of every /v1 route: 401 unless it is a configured one."""
    if not token_ok(bearer_token(authorization), config().api_tokens):
        raise HTTPException(
            status_code=401,
            detail="a bearer token from RECORDER_API_TOKENS is required",
            headers={"WWW-Authenticate": "Bearer"},
        )


# FastAPI's /docs loads Swagger UI from a CDN: FastAPIOffline serves the same files itself
app = FastAPIOffline(
    title="videosdk-recorder",
    summary="Record VideoSDK meetings reliably: enqueue starts and stops, look jobs up.",
    version="1",
)
app.router.routes.append(
    Route(WEBHOOK_PATH, webhook_endpoint(lambda: api.handle_webhook), methods=["POST"])
)


@app.exception_handler(ValidationError)
async def invalid(request: Request, exc: ValidationError) -> JSONResponse:
    status = 409 if isinstance(exc, IdempotencyConflict) else 422
    where = "query" if exc.field in QUERY_FIELDS and request.method == "GET" else "body"
    detail = [{"loc": [where, exc.field], "msg": str(exc), "type": exc.error_type}]
    return JSONResponse({"detail": detail}, status_code=status)


@app.exception_handler(BrokerUnavailable)
async def unavailable(request: Request, exc: BrokerUnavailable) -> JSONResponse:
    return JSONResponse({"detail": "Redis did not take the job; try again"}, status_code=503)


async def json_object(request: Request) -> dict[str, Any]:
    """The request's JSON object body, read up to :data:`BODY_MAX_BYTES`; else 413 or 422."""
    raw = await read_limited(request, BODY_MAX_BYTES)
    if raw is None:
        raise HTTPException(status_code=413, detail="request body too large")
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        raise ValidationError("body", "must be a JSON object") from None
    if not isinstance(body, dict):
        raise ValidationError("body", "must be a JSON object")
    return body


JsonObject = Annotated[dict[str, Any], Depends(json_object)]


def _options(body: dict[str, Any], allowed: frozenset[str]) -> tuple[str, dict[str, Any]]:
    room_id = body.get("room_id")
    if not isinstance(room_id, str):
        raise ValidationError("room_id", "is required, a string")
    unknown = sorted(set(body) - allowed - {"room_id"})
    if unknown:
        raise ValidationError(unknown[0], "is not an option", allowed=sorted(allowed))
    options = {k: v for k, v in body.items() if k != "room_id"}
    if options.get("run_at") is not None:
        options["run_at"] = _time(options["run_at"])
    return room_id, options


def _time(value: object) -> datetime:
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError("run_at", "must be an ISO 8601 time with a time zone") from None
    if when.tzinfo is None:
        raise ValidationError("run_at", "must be an ISO 8601 time with a time zone")
    return when


@app.post("/v1/recordings", status_code=201, dependencies=[Depends(require_token)])
async def enqueue(body: JsonObject) -> dict[str, Any]:
    """Enqueue a start (``enqueue_recording``): 201 the job."""
    room_id, options = _options(body, ENQUEUE_FIELDS)
    job = await run_in_threadpool(lambda: api.enqueue_recording(room_id, **options))
    return job.to_dict()


@app.get("/v1/recordings/{job_id}", dependencies=[Depends(require_token)])
def get(job_id: str) -> dict[str, Any]:
    """One job: 200, or 404."""
    job = api.get_job(job_id)
    if job is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id}")
    return job.to_dict()


@app.get("/v1/recordings", dependencies=[Depends(require_token)])
def jobs(
    room_id: str | None = None, status: str | None = None, limit: int = Query(default=50)
) -> dict[str, Any]:
    """Jobs newest first, of one room and/or status: ``{"jobs": [...]}``."""
    return {"jobs": [j.to_dict() for j in api.list_jobs(room_id, status, limit)]}


@app.post("/v1/recordings/{job_id}/cancel", dependencies=[Depends(require_token)])
def cancel(job_id: str) -> dict[str, Any]:
    """Cancel a job that has not started: 200 the job (unchanged if it had), 404 unknown."""
    try:
        return api.cancel_job(job_id).to_dict()
    except JobNotFound:
        raise HTTPException(status_code=404, detail=f"no job {job_id}") from None


@app.post("/v1/stops", status_code=201, dependencies=[Depends(require_token)])
async def stop(body: JsonObject) -> dict[str, Any]:
    """Enqueue a stop (``stop_recording``): 201 the stop job."""
    room_id, options = _options(body, STOP_FIELDS)
    job = await run_in_threadpool(lambda: api.stop_recording(room_id, **options))
    return job.to_dict()
