"""The README's runbook: every command it shows is a real entry point with the flags it uses,
its error-type table covers every type the code can record, and its alert table every rule."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest
import yaml

from tasks import errors
from tasks.cli import commands as cli
from tests.conftest import ROOT
from worker.task import ERROR_TYPES

README = (ROOT / "README.md").read_text(encoding="utf-8")
#: error types that are bases, never recorded on their own
BASES = {"error", "api_error"}


def runbook() -> str:
    start = README.index("### Runbook")
    return README[start : README.index("\n## ", start)]


def commands() -> list[list[str]]:
    """Each ``recorder``/``celery`` command line of the runbook's sh blocks, as tokens."""
    found = []
    for block in re.findall(r"```sh\n(.*?)```", runbook(), flags=re.S):
        for line in block.splitlines():
            tokens = shlex.split(line, comments=True)
            if tokens and tokens[0] in ("recorder", "celery"):
                found.append(tokens)
    return found


def flags(tokens: list[str]) -> list[str]:
    return [t.split("=")[0] for t in tokens if t.startswith("-") and t not in ("-A",)]


def test_the_runbook_shows_commands_of_both_entry_points() -> None:
    firsts = {tokens[0] for tokens in commands()}
    assert firsts == {"recorder", "celery"} and len(commands()) >= 8


@pytest.mark.parametrize(
    "tokens", [t for t in commands() if t[0] == "recorder"], ids=lambda t: " ".join(t[:2])
)
def test_each_recorder_command_of_the_runbook_exists_with_its_flags(
    tokens: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    subcommand = tokens[1]
    assert cli.main([subcommand, "--help"]) == 0
    help_text = capsys.readouterr().out
    for flag in flags(tokens):
        assert flag in help_text, f"recorder {subcommand} has no {flag}"


@pytest.mark.parametrize(
    "tokens", [t for t in commands() if t[0] == "celery"], ids=lambda t: " ".join(t[3:5])
)
def test_each_celery_command_of_the_runbook_exists_with_its_flags(tokens: list[str]) -> None:
    assert tokens[1:3] == ["-A", "worker"]
    subcommand = tokens[3]
    asks = ["--list"] if subcommand in ("inspect", "control") else ["--help"]
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", subcommand, *asks],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    if subcommand in ("inspect", "control"):
        assert re.search(rf"^\s*\|?\s*{tokens[4]}\b", result.stdout, re.M), tokens[4]
    else:
        for flag in flags(tokens[4:]):
            assert flag in result.stdout, f"celery {subcommand} has no {flag}"


def recordable_error_types() -> set[str]:
    types = set(ERROR_TYPES) | set(errors.RequestRefused.TYPES.values()) | {"http_error"}
    stack: list[type] = [errors.RecorderError]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        types.add(str(cls.__dict__.get("error_type", "error")))
    return types - BASES


def test_the_error_type_table_covers_every_type_the_code_can_record() -> None:
    table = runbook().split("**What an `error.type` means**")[1].split("**Alerts**")[0]
    shown = set(re.findall(r"^\| `([a-z_]+)`(?:, `([a-z_]+)`)?", table, re.M))
    named = {name for pair in shown for name in pair if name}
    assert recordable_error_types() - named == set()


def test_the_alert_table_covers_every_rule() -> None:
    loaded = yaml.safe_load((ROOT / "deploy/prometheus/recorder-alerts.yml").read_text())
    rules = {rule["alert"] for group in loaded["groups"] for rule in group["rules"]}
    table = runbook().split("**Alerts**")[1]
    assert rules == set(re.findall(r"^\| `(Recorder[A-Za-z]+)`", table, re.M))
