"""The ``recorder`` command line (``tasks.cli.commands``): jobs, schedules, operations, sandbox, demo."""

from __future__ import annotations

from tasks.cli.commands import main

__all__ = ["main"]
