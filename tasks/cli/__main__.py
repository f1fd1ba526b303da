"""``python -m tasks.cli``: the ``recorder`` command."""

from __future__ import annotations

import sys

from tasks.cli.commands import main

sys.exit(main())
