"""docker-compose.yml, Dockerfile and .env.example, checked without a Docker engine.

Every command is a real entry point of this project, every variable is documented, Redis is set
up as a broker needs, and the image runs as a non-root user with no secret in it. When the
``docker compose`` client is installed, ``docker compose config`` must accept the file too.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import sys
from typing import Any

import pytest
import yaml

from tasks.cli import commands as cli
from tests.conftest import ROOT

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
APP_SERVICES = ("worker", "beat", "flower", "sandbox")
CELERY_COMMANDS = {"worker", "beat", "flower"}
#: ${VAR}, ${VAR:-default}, ${VAR:?error}, nested too
INTERPOLATED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
#: how the code reads a variable: env.get("X"), os.environ.get("X"), env["X"], _number(env, "X"
READ_IN_CODE = re.compile(
    r"""(?:environ|env)(?:\.get\(|\[)\s*["']([A-Z][A-Z0-9_]+)["']|\(\s*env,\s*["']([A-Z][A-Z0-9_]+)["']"""
)
#: a variable read through a file-or-value helper: ``_read_text(env, "NAME", "NAME_FILE")``
READ_PAIR = re.compile(r"""\(\s*env,\s*["'][A-Z][A-Z0-9_]+["'],\s*["']([A-Z][A-Z0-9_]+)["']""")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


def documented() -> set[str]:
    """Variable names .env.example sets or shows (commented lines count)."""
    names = re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), flags=re.M)
    return set(names)


def test_app_services_share_one_definition_and_differ_in_their_command(
    compose: dict[str, Any],
) -> None:
    app = compose["x-app"]
    services = compose["services"]
    for name in APP_SERVICES:
        service = services[name]
        assert service["image"] == app["image"] and service["build"] == app["build"], name
        assert service["command"], name
    commands = {tuple(services[name]["command"]) for name in APP_SERVICES}
    assert len(commands) == len(APP_SERVICES)
    assert services["sandbox"]["profiles"] == ["sandbox"]
    assert all("profiles" not in services[n] for n in ("redis", "worker", "beat", "flower"))


def test_every_command_is_a_real_entry_point(compose: dict[str, Any]) -> None:
    celery_subcommands: set[str] = set()
    for name, service in compose["services"].items():
        commands = [service.get("command")]
        health = service.get("healthcheck", {}).get("test", [])
        if health[:1] == ["CMD"] and health[1:2] == ["recorder"]:
            commands.append(health[1:])
        for command in filter(None, commands):
            if name == "redis":
                assert command[0] == "redis-server"
            elif command[0] == "celery":
                assert command[1:3] == ["-A", "worker"] and command[3] in CELERY_COMMANDS, name
                celery_subcommands.add(command[3])
            else:
                assert command[0] == "recorder", name
                assert_recorder_subcommand(command[1])
    assert celery_subcommands == CELERY_COMMANDS


def assert_recorder_subcommand(sub: str) -> None:
    """``recorder SUB --help`` exits 0 (run in-process; an unknown SUB exits 2)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert cli.main([sub, "--help"]) == 0, f"recorder has no subcommand {sub!r}"
    assert f"recorder {sub}" in out.getvalue()


def test_an_unknown_recorder_subcommand_is_caught() -> None:
    with pytest.raises(AssertionError, match="no subcommand"):
        assert_recorder_subcommand("no-such-command")


@pytest.mark.parametrize("sub", sorted(CELERY_COMMANDS))
def test_celery_subcommands_exist_for_the_app(sub: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", sub, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_every_compose_variable_is_in_env_example(compose: dict[str, Any]) -> None:
    used = set(INTERPOLATED.findall(COMPOSE.read_text(encoding="utf-8")))
    # variables passed through by name (no value) come from .env too
    for service in [compose["x-app"], *compose["services"].values()]:
        env = service.get("environment") or {}
        used |= {k for k, v in env.items() if v is None}
    used |= {s.get("environment") for s in compose["secrets"].values()} - {None}
    missing = used - documented()
    assert not missing, f"not in .env.example: {sorted(missing)}"


def test_every_variable_the_code_reads_is_in_env_example() -> None:
    read: set[str] = set()
    for path in [*ROOT.glob("worker/*.py"), *ROOT.glob("tasks/*.py")]:
        for match in READ_IN_CODE.finditer(path.read_text(encoding="utf-8")):
            read.add(match.group(1) or match.group(2))
        read |= set(READ_PAIR.findall(path.read_text(encoding="utf-8")))
    assert {"REDIS_URL", "VIDEOSDK_SECRET_FILE", "RECORDER_RATE_LIMIT"} <= read  # the regex works
    missing = read - documented()
    assert not missing, f"not in .env.example: {sorted(missing)}"


def test_the_app_passes_through_every_setting(compose: dict[str, Any]) -> None:
    env_names = set(compose["x-app"]["environment"])
    code = (ROOT / "tasks" / "settings.py").read_text()
    settings_read = {m.group(1) or m.group(2) for m in READ_IN_CODE.finditer(code)}
    settings_read |= set(READ_PAIR.findall(code))
    # the secret arrives as a file, only in the services that need it
    assert settings_read - env_names == {"VIDEOSDK_SECRET", "VIDEOSDK_SECRET_FILE"}
    assert "VIDEOSDK_WEBHOOK_PUBLIC_KEY_FILE" in settings_read


def test_redis_runs_as_a_broker_needs(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"] == "redis:7-alpine"
    command = " ".join(redis["command"])
    for setting in (
        "--appendonly yes",
        "--appendfsync everysec",
        "--maxmemory-policy noeviction",
        "--requirepass ${REDIS_PASSWORD",
    ):
        assert setting in command
    assert redis["healthcheck"]["test"]
    (volume,) = redis["volumes"]
    assert volume.split(":")[0] in compose["volumes"] and volume.endswith(":/data")
    for name in APP_SERVICES[:3]:
        assert compose["services"][name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_secrets_reach_only_the_worker_and_the_sandbox_as_files(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "videosdk_secret" in compose["secrets"]
    for name in ("worker", "sandbox"):
        assert services[name]["secrets"] == ["videosdk_secret"]
        env = services[name]["environment"]
        assert env["VIDEOSDK_SECRET_FILE"] == "/run/secrets/videosdk_secret"
    for name in ("beat", "flower"):
        assert "secrets" not in services[name]
        assert "VIDEOSDK_SECRET_FILE" not in services[name]["environment"]
    for service in services.values():
        assert "VIDEOSDK_SECRET" not in (service.get("environment") or {})


def test_flower_has_basic_auth_and_port_5555(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert "FLOWER_UNAUTHENTICATED_API" not in flower["environment"]
    assert flower["ports"] == ["127.0.0.1:5555:5555"]
    assert flower["healthcheck"]["test"]


def test_the_worker_health_check_is_recorder_health_of_its_own_host(
    compose: dict[str, Any],
) -> None:
    test = compose["services"]["worker"]["healthcheck"]["test"]
    assert test == ["CMD", "recorder", "health", "--this-host"]


def test_dockerfile_runs_as_a_non_root_user_and_holds_no_secret() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    instructions = [line.split(None, 1) for line in text.splitlines() if line and line[0] != "#"]
    keywords = [parts[0].upper() for parts in instructions if parts]
    assert instructions[0] == ["FROM", "python:3.11-slim"]
    users = [parts[1].strip() for parts in instructions if parts[0].upper() == "USER"]
    assert users and users[-1] not in {"root", "0", "0:0"}
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")
    assert "pip install ." in text
    for parts in instructions:
        if parts[0].upper() in {"ENV", "ARG", "LABEL"}:
            assert not re.search(r"SECRET|PASSWORD|TOKEN|API_KEY", parts[1], re.I), parts
    for line in (p[1] for p in instructions if p[0].upper() in {"COPY", "ADD"}):
        assert ".env" not in line and "secret" not in line.lower(), line


def test_dockerignore_lets_in_only_the_sources() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "an allow-list: everything (.env, .venv, .git) is excluded first"
    allowed = {p[1:] for p in patterns if p.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "worker", "tasks"}


def docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, timeout=30
    )
    return probe.returncode == 0


@pytest.mark.skipif(not docker_compose_available(), reason="the docker compose client is absent")
def test_docker_compose_config_accepts_the_file() -> None:
    for profile in ([], ["--profile", "sandbox"]):
        files = ["-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE)]
        result = subprocess.run(
            ["docker", "compose", *files, *profile, "config", "--quiet"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr


def test_env_example_is_usable_as_shipped_with_the_sandbox() -> None:
    values = dict(re.findall(r"^([A-Z][A-Z0-9_]+)=(.*)$", ENV_EXAMPLE.read_text(), flags=re.M))
    for required in ("REDIS_PASSWORD", "FLOWER_BASIC_AUTH", "VIDEOSDK_API_KEY", "VIDEOSDK_SECRET"):
        assert values.get(required), required
    assert values["VIDEOSDK_API_BASE"] == "http://sandbox:8090"
    assert re.fullmatch(r"[A-Za-z0-9_-]+", values["REDIS_PASSWORD"]), "URL-safe"
    assert ":" in values["FLOWER_BASIC_AUTH"]
    # every value set as shipped is one the settings accept
    settings_env = {k: v for k, v in values.items() if k.startswith(("RECORDER_", "VIDEOSDK_"))}
    from worker.config import Settings

    Settings.from_env(settings_env).require_credentials()
