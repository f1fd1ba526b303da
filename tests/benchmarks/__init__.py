"""Benchmarks: scripts run by hand (``python tests/benchmarks/<name>.py``), never by pytest."""
