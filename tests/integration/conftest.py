"""Fixtures for real ``celery -A worker beat`` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_for

#: beat timings for tests: a standby takes over within LOCK + MAX_INTERVAL seconds.
BEAT_MAX_INTERVAL_S = 1
BEAT_LOCK_TIMEOUT_S = 4
BEAT_ENV = {
    "RECORDER_BEAT_MAX_INTERVAL": str(BEAT_MAX_INTERVAL_S),
    "RECORDER_BEAT_LOCK_TIMEOUT": str(BEAT_LOCK_TIMEOUT_S),
}


class BeatProcess:
    """A real ``celery -A worker beat`` subprocess (no scheduler flags), output to a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "celery", "-A", "worker", "beat", "--loglevel=INFO"]
        self._log = open(log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def leading(self) -> bool:
        return "beat: Acquired lock" in self.log()

    def wait_for_log(self, text: str, timeout_s: float = 30.0) -> BeatProcess:
        def seen() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"beat exited {self.proc.returncode}:\n{self.log()}")
            return text in self.log()

        wait_for(seen, timeout_s=timeout_s, interval_s=0.1)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def start_beat(
    recorder_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., BeatProcess]]:
    """Start real beat processes (stopped at teardown): ``start_beat(leader=True, **env)``.

    With ``leader`` it returns once the beat holds the lock, else once it has started (a
    standby waits for the lock).
    """
    started: list[BeatProcess] = []

    def start(leader: bool = True, **env: str) -> BeatProcess:
        log = tmp_path / f"beat-{len(started)}.log"
        beat = BeatProcess({**recorder_env, **BEAT_ENV, **env}, log)
        started.append(beat)
        return beat.wait_for_log("beat: Acquired lock" if leader else "beat: Starting...")

    yield start
    for beat in started:
        beat.stop()
