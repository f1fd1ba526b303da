"""Recurring schedules: zoned cron and intervals (``cron``), stored as celery-redbeat entries
(``store``), validated and fired as ordinary jobs (``firing``), and their public API (``api``).
"""
