"""The ``recorder`` command line: ``main`` from ``tasks.cli.commands``.

Its subcommands: jobs (``jobs``), schedules (``schedule``), operations (``ops``), the sandbox and
the demo (``demo``).
"""

from __future__ import annotations

from tasks.cli.commands import main

__all__ = ["main"]
