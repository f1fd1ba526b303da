"""Fixtures for real ``celery -A worker beat`` processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import CeleryProcess

#: beat timings for tests: a standby takes over within LOCK + MAX_INTERVAL seconds.
BEAT_MAX_INTERVAL_S = 1
BEAT_LOCK_TIMEOUT_S = 4
BEAT_ENV = {
    "RECORDER_BEAT_MAX_INTERVAL": str(BEAT_MAX_INTERVAL_S),
    "RECORDER_BEAT_LOCK_TIMEOUT": str(BEAT_LOCK_TIMEOUT_S),
}


class BeatProcess(CeleryProcess):
    """A real ``celery -A worker beat`` subprocess (no scheduler flags)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__("beat", env, log_path, "--loglevel=INFO")

    @property
    def leading(self) -> bool:
        return "beat: Acquired lock" in self.log()


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
