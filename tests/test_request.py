"""Tests for tasks.request: the start-recording body, its validation and its exact JSON shape."""

from __future__ import annotations

import copy
from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.errors import ValidationError
from tasks.request import RecordingRequest

# No example database: the run must not write files into the repository.
properties = settings(database=None, deadline=None, max_examples=200)

ENUMS: dict[str, list[Any]] = {
    "config.layout.type": ["GRID", "SPOTLIGHT", "SIDEBAR"],
    "config.layout.priority": ["SPEAKER", "PIN"],
    "config.theme": ["DARK", "LIGHT", "DEFAULT"],
    "config.mode": ["video-and-audio", "audio"],
    "config.quality": ["low", "med", "high"],
    "config.orientation": ["portrait", "landscape"],
}

FULL_BODY: dict[str, Any] = {
    "roomId": "abcd-efgh-ijkl",
    "templateUrl": "https://example.com/template",
    "transcription": {"enabled": True},
    "summary": {"enabled": True, "prompt": "Write a summary"},
    "config": {
        "layout": {"type": "GRID", "priority": "SPEAKER", "gridSize": 4},
        "theme": "DARK",
        "mode": "video-and-audio",
        "quality": "high",
        "orientation": "landscape",
    },
    "webhookUrl": "http://hooks.example.com:8080/recordings?x=1",
    "awsDirPath": "recordings/2026/",
}


def nested(path: str, value: Any) -> dict[str, Any]:
    """``nested("config.layout.type", "GRID")`` -> ``{"layout": {"type": "GRID"}}`` (no top key)."""
    *parents, leaf = path.split(".")[1:]
    tree: dict[str, Any] = {leaf: value}
    for key in reversed(parents):
        tree = {key: tree}
    return tree


def build_error(**kwargs: Any) -> ValidationError:
    kwargs.setdefault("room_id", "room-1")
    with pytest.raises(ValidationError) as caught:
        RecordingRequest.build(**kwargs)
    return caught.value


def body_error(body: object) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        RecordingRequest.from_body(body)
    return caught.value


# --- enums and gridSize -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value"), [(path, value) for path, values in ENUMS.items() for value in values]
)
def test_build_accepts_every_enum_value(path: str, value: str) -> None:
    request = RecordingRequest.build("room-1", config=nested(path, value))
    assert request.to_body() == {"roomId": "room-1", "config": nested(path, value)}


@pytest.mark.parametrize("path", sorted(ENUMS))
@pytest.mark.parametrize("bad", ["NOPE", "grid", "", 1, True, ["GRID"]])
def test_build_rejects_unknown_enum_value_naming_field_and_allowed_values(
    path: str, bad: object
) -> None:
    error = build_error(config=nested(path, bad))
    assert error.field == path
    assert error.allowed == ENUMS[path]
    assert all(f'"{value}"' in str(error) for value in ENUMS[path])


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_grid_size_accepts_one_to_four(size: int) -> None:
    body = RecordingRequest.build("room-1", config={"layout": {"gridSize": size}}).to_body()
    assert body["config"] == {"layout": {"gridSize": size}}


@pytest.mark.parametrize("bad", [0, 5, -1, True, False, 2.0, "2", [2]])
def test_grid_size_rejects_out_of_range_and_non_integers(bad: object) -> None:
    error = build_error(config={"layout": {"gridSize": bad}})
    assert error.field == "config.layout.gridSize"
    assert error.allowed == [1, 2, 3, 4]
    assert "1, 2, 3, 4" in str(error)


# --- what the body contains ---------------------------------------------------------------------


def test_build_leaves_out_options_not_given() -> None:
    assert RecordingRequest.build("room-1").to_body() == {"roomId": "room-1"}


def test_build_treats_none_arguments_as_not_given() -> None:
    request = RecordingRequest.build(
        "room-1", template_url=None, transcription=None, summary=None, config=None,
        webhook_url=None, aws_dir_path=None,
    )  # fmt: skip
    assert request.to_body() == {"roomId": "room-1"}


def test_build_leaves_out_nested_options_not_given() -> None:
    request = RecordingRequest.build(
        "room-1",
        summary={"enabled": False},
        config={"layout": {"priority": "PIN"}, "mode": "audio"},
    )
    assert request.to_body() == {
        "roomId": "room-1",
        "summary": {"enabled": False},
        "config": {"layout": {"priority": "PIN"}, "mode": "audio"},
    }


def test_build_keeps_empty_nested_objects_that_were_given() -> None:
    body = RecordingRequest.build("room-1", config={"layout": {}}).to_body()
    assert body == {"roomId": "room-1", "config": {"layout": {}}}


def test_full_body_spells_keys_exactly_as_the_contract() -> None:
    request = RecordingRequest.build(
        FULL_BODY["roomId"],
        template_url=FULL_BODY["templateUrl"],
        transcription=FULL_BODY["transcription"],
        summary=FULL_BODY["summary"],
        config=FULL_BODY["config"],
        webhook_url=FULL_BODY["webhookUrl"],
        aws_dir_path=FULL_BODY["awsDirPath"],
    )
    body = request.to_body()
    assert body == FULL_BODY
    assert list(body) == [
        "roomId", "templateUrl", "transcription", "summary", "config", "webhookUrl", "awsDirPath",
    ]  # fmt: skip
    assert list(body["config"]) == ["layout", "theme", "mode", "quality", "orientation"]
    assert list(body["config"]["layout"]) == ["type", "priority", "gridSize"]
    assert list(body["summary"]) == ["enabled", "prompt"]


def test_build_does_not_share_the_callers_dicts() -> None:
    config: dict[str, Any] = {"layout": {"gridSize": 2}}
    request = RecordingRequest.build("room-1", config=config)
    config["layout"]["gridSize"] = 99
    assert request.to_body()["config"] == {"layout": {"gridSize": 2}}


def test_request_is_immutable() -> None:
    request = RecordingRequest.build("room-1")
    with pytest.raises(pydantic.ValidationError):
        request.room_id = "other"


# --- URLs, room id, path ------------------------------------------------------------------------

GOOD_URLS = [
    "http://example.com",
    "https://example.com",
    "https://example.com/",
    "HTTPS://Example.COM/Path?q=1#frag",
    "http://127.0.0.1:8000/hook",
    "https://[::1]:443/x",
    "https://user@example.com/a/b",
]
BAD_URLS = [
    "ftp://example.com/file",
    "mailto:someone@example.com",
    "javascript:alert(1)",
    "/relative/path",
    "example.com/path",
    "//example.com/path",
    "http://",
    "https://",
    "http:///path",
    "http://:80/",
    "http://exa mple.com/",
    "http://example.com/a b",
    " http://example.com",
    "http://example.com\n",
    "http://example.com/\tx",
    "http://example.com:notaport/",
    "http://example.com:99999/",
    "http://[::1/",
    "",
]


@pytest.mark.parametrize("url", GOOD_URLS)
@pytest.mark.parametrize(
    ("argument", "key"), [("template_url", "templateUrl"), ("webhook_url", "webhookUrl")]
)
def test_urls_accept_http_and_https_and_keep_the_string_exactly(
    argument: str, key: str, url: str
) -> None:
    options: dict[str, Any] = {argument: url}
    body = RecordingRequest.build("room-1", **options).to_body()
    assert body[key] == url


@pytest.mark.parametrize("url", BAD_URLS)
@pytest.mark.parametrize("argument", ["template_url", "webhook_url"])
def test_urls_reject_other_schemes_relative_hostless_and_whitespace(
    argument: str, url: str
) -> None:
    assert build_error(**{argument: url}).field == argument


@pytest.mark.parametrize("argument", ["template_url", "webhook_url", "aws_dir_path"])
def test_string_options_reject_non_strings(argument: str) -> None:
    error = build_error(**{argument: 42})
    assert (error.field, str(error)) == (argument, f"{argument}: must be a string")


@pytest.mark.parametrize(
    "room_id", ["", " ", "   ", "\t", "\n", " room-1", "room-1 ", "room-1\n", "a\x00b", "a\x7fb",
                "a\x1bb", "x" * 257],
)  # fmt: skip
def test_room_id_rejects_empty_whitespace_padded_control_chars_and_too_long(room_id: str) -> None:
    assert build_error(room_id=room_id).field == "room_id"


@pytest.mark.parametrize("room_id", ["r", "abcd-efgh-ijkl", "room 1", "räum-ü", "x" * 256])
def test_room_id_is_kept_exactly_as_given(room_id: str) -> None:
    assert RecordingRequest.build(room_id).to_body() == {"roomId": room_id}


@pytest.mark.parametrize("room_id", [None, 123, b"room", ["room"]])
def test_room_id_must_be_a_string(room_id: object) -> None:
    assert build_error(room_id=room_id).field == "room_id"


@pytest.mark.parametrize("path", ["", " ", "\t"])
def test_aws_dir_path_rejects_empty(path: str) -> None:
    assert build_error(aws_dir_path=path).field == "aws_dir_path"


# --- transcription and summary ------------------------------------------------------------------


@pytest.mark.parametrize("enabled", [True, False])
def test_transcription_accepts_a_boolean(enabled: bool) -> None:
    body = RecordingRequest.build("room-1", transcription={"enabled": enabled}).to_body()
    assert body["transcription"] == {"enabled": enabled}


@pytest.mark.parametrize("enabled", ["yes", "true", 1, 0, 1.0, None, [True]])
@pytest.mark.parametrize("option", ["transcription", "summary"])
def test_enabled_must_be_a_strict_boolean(option: str, enabled: object) -> None:
    assert build_error(**{option: {"enabled": enabled}}).field == f"{option}.enabled"


@pytest.mark.parametrize("option", ["transcription", "summary"])
def test_enabled_is_required(option: str) -> None:
    error = build_error(**{option: {}})
    assert error.field == f"{option}.enabled"
    assert "required" in str(error)


def test_summary_prompt_is_optional_and_kept_when_given() -> None:
    without = RecordingRequest.build("room-1", summary={"enabled": True}).to_body()
    with_prompt = RecordingRequest.build("room-1", summary={"enabled": True, "prompt": ""})
    assert without["summary"] == {"enabled": True}
    assert with_prompt.to_body()["summary"] == {"enabled": True, "prompt": ""}
    assert build_error(summary={"enabled": True, "prompt": 3}).field == "summary.prompt"


# --- wrong shapes, unknown keys, nulls ----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"config": []}, "config"),
        ({"config": "GRID"}, "config"),
        ({"config": {"layout": "GRID"}}, "config.layout"),
        ({"transcription": "yes"}, "transcription"),
        ({"transcription": True}, "transcription"),
        ({"summary": ["enabled"]}, "summary"),
    ],
)
def test_wrong_types_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    error = build_error(**kwargs)
    assert error.field == field
    assert "must be an object" in str(error)


@pytest.mark.parametrize(
    ("kwargs", "field", "allowed"),
    [
        ({"config": {"colour": "red"}}, "config.colour",
         ["layout", "theme", "mode", "quality", "orientation"]),
        ({"config": {"layout": {"grid_size": 2}}}, "config.layout.grid_size",
         ["type", "priority", "gridSize"]),
        ({"transcription": {"enabled": True, "language": "en"}}, "transcription.language",
         ["enabled"]),
        ({"summary": {"enabled": True, "Prompt": "x"}}, "summary.Prompt", ["enabled", "prompt"]),
    ],
)  # fmt: skip
def test_unknown_nested_keys_are_rejected_naming_the_known_keys(
    kwargs: dict[str, Any], field: str, allowed: list[str]
) -> None:
    error = build_error(**kwargs)
    assert (error.field, error.allowed) == (field, allowed)


def test_from_body_rejects_unknown_top_level_keys() -> None:
    error = body_error({"roomId": "room-1", "room_id": "room-1"})
    assert error.field == "room_id"
    assert error.allowed is not None and "roomId" in error.allowed


def test_nested_null_is_rejected_not_dropped() -> None:
    assert build_error(config={"theme": None}).field == "config.theme"
    assert build_error(config={"layout": None}).field == "config.layout"
    assert build_error(summary={"enabled": True, "prompt": None}).field == "summary.prompt"


def test_validation_error_is_a_value_error_and_not_pydantics() -> None:
    error = build_error(room_id="")
    assert isinstance(error, ValueError)
    assert not isinstance(error, pydantic.ValidationError)
    assert error.to_record()["type"] == "validation"


# --- from_body ----------------------------------------------------------------------------------


def test_from_body_round_trips_to_body() -> None:
    assert RecordingRequest.from_body(FULL_BODY).to_body() == FULL_BODY
    minimal = {"roomId": "room-1"}
    assert RecordingRequest.from_body(minimal).to_body() == minimal


def test_from_body_equals_build_of_the_same_options() -> None:
    built = RecordingRequest.build(
        "room-1", config={"layout": {"gridSize": 3}}, summary={"enabled": False}
    )
    assert RecordingRequest.from_body(built.to_body()) == built


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "roomId"),
        ({"roomId": ""}, "roomId"),
        ({"roomId": None}, "roomId"),
        ({"roomId": "r", "templateUrl": "ftp://x"}, "templateUrl"),
        ({"roomId": "r", "webhookUrl": None}, "webhookUrl"),
        ({"roomId": "r", "awsDirPath": ""}, "awsDirPath"),
        ({"roomId": "r", "config": {"layout": {"gridSize": 9}}}, "config.layout.gridSize"),
        ({"roomId": "r", "summary": {"enabled": "no"}}, "summary.enabled"),
    ],
)
def test_from_body_names_api_keys_in_errors(body: dict[str, Any], field: str) -> None:
    assert body_error(body).field == field


@pytest.mark.parametrize("body", [None, [], "roomId", 1, [("roomId", "r")]])
def test_from_body_rejects_a_body_that_is_not_an_object(body: object) -> None:
    error = body_error(body)
    assert error.field == "body"
    assert "must be an object" in str(error)


# --- properties ---------------------------------------------------------------------------------

room_ids = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=256).filter(
    lambda s: s.strip() == s and s != ""
)
urls = st.builds(
    "{}://{}{}".format,
    st.sampled_from(["http", "https"]),
    st.from_regex(r"[a-z0-9-]{1,20}(\.[a-z]{2,6}){0,2}(:[0-9]{1,4})?", fullmatch=True),
    st.from_regex(r"(/[A-Za-z0-9._~%-]{0,10}){0,3}(\?[a-z0-9=&]{0,10})?", fullmatch=True),
)
layouts = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(ENUMS["config.layout.type"]),
        "priority": st.sampled_from(ENUMS["config.layout.priority"]),
        "gridSize": st.integers(1, 4),
    },
)
configs = st.fixed_dictionaries(
    {},
    optional={"layout": layouts}
    | {path.split(".")[1]: st.sampled_from(ENUMS[path]) for path in ENUMS if path.count(".") == 1},
)
bodies = st.fixed_dictionaries(
    {"roomId": room_ids},
    optional={
        "templateUrl": urls,
        "transcription": st.fixed_dictionaries({"enabled": st.booleans()}),
        "summary": st.fixed_dictionaries(
            {"enabled": st.booleans()}, optional={"prompt": st.text()}
        ),
        "config": configs,
        "webhookUrl": urls,
        "awsDirPath": st.text(min_size=1).filter(str.strip),
    },
)
ARGUMENTS = {
    "templateUrl": "template_url", "transcription": "transcription", "summary": "summary",
    "config": "config", "webhookUrl": "webhook_url", "awsDirPath": "aws_dir_path",
}  # fmt: skip
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def contains_none(value: object) -> bool:
    if isinstance(value, dict):
        return any(contains_none(item) for item in value.values())
    return value is None


@properties
@given(bodies)
def test_any_valid_body_round_trips_through_build_and_from_body(body: dict[str, Any]) -> None:
    original = copy.deepcopy(body)
    kwargs = {ARGUMENTS[key]: value for key, value in body.items() if key != "roomId"}
    built = RecordingRequest.build(body["roomId"], **kwargs)
    assert built.to_body() == original
    assert RecordingRequest.from_body(built.to_body()) == built
    assert not contains_none(built.to_body())


@properties
@given(json_values)
def test_from_body_of_any_json_raises_only_our_validation_error(value: object) -> None:
    body = value if not isinstance(value, dict) else {"roomId": "room-1", **value}
    try:
        request = RecordingRequest.from_body(body)
    except ValidationError as error:
        assert error.field
    else:
        assert not contains_none(request.to_body())


@properties
@given(configs, st.sampled_from(["config", "config.layout"]), st.text(min_size=1, max_size=10))
def test_an_unknown_key_at_any_level_is_rejected_and_named(
    config: dict[str, Any], where: str, key: str
) -> None:
    known = {"layout", "theme", "mode", "quality", "orientation", "type", "priority", "gridSize"}
    if key in known:
        return
    target = config if where == "config" else config.setdefault("layout", {})
    target[key] = "x"
    assert build_error(config=config).field == f"{where}.{key}"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"room_id": "room-\ud800"}, "room_id"),
        ({"summary": {"enabled": True, "prompt": "\udfff tail"}}, "summary.prompt"),
        ({"aws_dir_path": "dir/\ud83d"}, "aws_dir_path"),
        ({"template_url": "https://example.com/\udc00"}, "template_url"),
    ],
)
def test_build_rejects_text_utf8_cannot_encode_naming_the_field(
    options: dict[str, object], field: str
) -> None:
    given = {"room_id": "room-1", **options}
    room_id = given.pop("room_id")
    with pytest.raises(ValidationError, match=f"^{field}: must be text encodable as UTF-8"):
        RecordingRequest.build(room_id, **given)  # type: ignore[arg-type]
