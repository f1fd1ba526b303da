"""RecordingRequest: the body of ``POST /v2/recordings/start``, validated before anything is stored.

The body is built from the producer's Python arguments (:meth:`RecordingRequest.build`) or checked
as the API would receive it (:meth:`RecordingRequest.from_body`, e.g. by the sandbox server). Nested
options use the API's own camelCase keys. An option not given is left out of the body at every
level; an explicit ``null`` inside a body is rejected rather than silently dropped, because the
contract never sends one. Strings the API sees (room id, URLs, paths) are kept exactly as given.

Every failure is a :class:`tasks.errors.ValidationError` naming the field: Python argument names at
the top level for ``build`` (``room_id``), API keys for ``from_body`` (``roomId``), and API keys
joined by dots below that (``config.layout.gridSize``).
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic.alias_generators import to_camel

from tasks.errors import ValidationError

ROOM_ID_MAX_CHARS = 256
LayoutType = Literal["GRID", "SPOTLIGHT", "SIDEBAR"]
LayoutPriority = Literal["SPEAKER", "PIN"]
Theme = Literal["DARK", "LIGHT", "DEFAULT"]
Mode = Literal["video-and-audio", "audio"]
Quality = Literal["low", "med", "high"]
Orientation = Literal["portrait", "landscape"]
GRID_SIZES = (1, 2, 3, 4)


#: the message for a string JSON and Redis cannot carry (a lone surrogate such as "\ud800")
UNENCODABLE = "must be text encodable as UTF-8 (it holds a lone surrogate)"


def is_utf8(value: str) -> bool:
    """Whether ``value`` can be encoded as UTF-8: False for lone surrogates ("\ud800")."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _has_control_char(value: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in value)


def _check_room_id(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    if value != value.strip():
        raise ValueError("must not start or end with whitespace")
    if len(value) > ROOM_ID_MAX_CHARS:
        raise ValueError(f"must be at most {ROOM_ID_MAX_CHARS} characters")
    if _has_control_char(value):
        raise ValueError("must not contain control characters")
    return value


def _check_url(value: str) -> str:
    # urlsplit silently drops tabs and newlines, so look at the raw string first.
    if any(ch.isspace() for ch in value) or _has_control_char(value):
        raise ValueError("must not contain whitespace or control characters")
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError for a malformed or out-of-range port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http or https URL with a host")
    return value


def _check_not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


RoomId = Annotated[str, AfterValidator(_check_room_id)]
WebUrl = Annotated[str, AfterValidator(_check_url)]
NonBlank = Annotated[str, AfterValidator(_check_not_blank)]
GridSize = Annotated[int, Field(ge=GRID_SIZES[0], le=GRID_SIZES[-1])]


class _Body(BaseModel):
    """Shared rules: immutable, no unknown keys, no type coercion, camelCase keys, no nulls."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, alias_generator=to_camel)

    @field_validator("*", mode="before")
    @classmethod
    def _reject_null_and_unencodable(cls, value: object, info: ValidationInfo) -> object:
        if value is None:
            required = (
                info.field_name is not None and cls.model_fields[info.field_name].is_required()
            )
            raise ValueError("is required" if required else "must be left out rather than null")
        if isinstance(value, str) and not is_utf8(value):
            raise ValueError(UNENCODABLE)
        return value


class Layout(_Body):
    type: LayoutType | None = None
    priority: LayoutPriority | None = None
    grid_size: GridSize | None = None


class RecordingConfig(_Body):
    layout: Layout | None = None
    theme: Theme | None = None
    mode: Mode | None = None
    quality: Quality | None = None
    orientation: Orientation | None = None


class Transcription(_Body):
    enabled: bool


class Summary(_Body):
    enabled: bool
    prompt: str | None = None


class RecordingRequest(_Body):
    """The start-recording body; fields in the contract's order, which ``to_body`` keeps."""

    room_id: RoomId
    template_url: WebUrl | None = None
    transcription: Transcription | None = None
    summary: Summary | None = None
    config: RecordingConfig | None = None
    webhook_url: WebUrl | None = None
    aws_dir_path: NonBlank | None = None

    @classmethod
    def build(
        cls,
        room_id: str,
        *,
        template_url: str | None = None,
        transcription: Mapping[str, Any] | None = None,
        summary: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        webhook_url: str | None = None,
        aws_dir_path: str | None = None,
    ) -> RecordingRequest:
        """Validate producer arguments; ``None`` means "not given". Nested dicts use API keys."""
        given = {
            "room_id": room_id,
            "template_url": template_url,
            "transcription": transcription,
            "summary": summary,
            "config": config,
            "webhook_url": webhook_url,
            "aws_dir_path": aws_dir_path,
        }
        body = {
            cls.model_fields[name].alias: value
            for name, value in given.items()
            if value is not None or name == "room_id"
        }
        return cls._validate(body, python_names=True)

    @classmethod
    def from_body(cls, body: object) -> RecordingRequest:
        """Validate a parsed JSON body with the API's camelCase keys, as the API would."""
        return cls._validate(body, python_names=False)

    def to_body(self) -> dict[str, Any]:
        """The exact JSON body: camelCase keys, options not given left out at every level."""
        return self.model_dump(by_alias=True, exclude_none=True)

    @classmethod
    def _validate(cls, body: object, *, python_names: bool) -> RecordingRequest:
        try:
            return cls.model_validate(body)
        except PydanticValidationError as exc:
            raise _converted(exc, python_names=python_names) from exc


#: the body's options by their Python names (``enqueue_recording``'s keyword arguments)
RECORDING_OPTIONS = tuple(name for name in RecordingRequest.model_fields if name != "room_id")


#: the fixed set of values accepted at each nested path; named in error messages.
_ALLOWED: dict[str, tuple[Any, ...]] = {
    "config.layout.type": get_args(LayoutType),
    "config.layout.priority": get_args(LayoutPriority),
    "config.layout.gridSize": GRID_SIZES,
    "config.theme": get_args(Theme),
    "config.mode": get_args(Mode),
    "config.quality": get_args(Quality),
    "config.orientation": get_args(Orientation),
}
#: the model found at each path, to name the keys it accepts when it meets an unknown one.
_MODELS: dict[str, type[BaseModel]] = {
    "": RecordingRequest,
    "transcription": Transcription,
    "summary": Summary,
    "config": RecordingConfig,
    "config.layout": Layout,
}
_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "is not a known key",
    "model_type": "must be an object",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
}


def _converted(exc: PydanticValidationError, *, python_names: bool) -> ValidationError:
    """Our ValidationError for pydantic's first error, naming the field and any allowed values."""
    error = exc.errors(include_url=False)[0]
    loc = [str(part) or '""' for part in error["loc"]]  # an empty key still needs a name
    path = ".".join(loc)
    allowed: list[Any] | None = list(_ALLOWED[path]) if path in _ALLOWED else None
    if error["type"] == "value_error":
        message = str(error["ctx"]["error"])
    elif allowed is not None:
        message = "must be one of " + ", ".join(json.dumps(value) for value in allowed)
    else:
        message = _MESSAGES.get(error["type"], error["msg"])
    if error["type"] == "extra_forbidden" and (parent := _MODELS.get(".".join(loc[:-1]))):
        allowed = [field.alias for field in parent.model_fields.values()]
    if not loc:
        return ValidationError("body", message)
    if python_names:
        by_alias = {field.alias: name for name, field in RecordingRequest.model_fields.items()}
        loc[0] = by_alias.get(loc[0], loc[0])
    return ValidationError(".".join(loc), message, allowed=allowed)
