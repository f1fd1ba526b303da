"""Recurring schedules: zoned cron (cronsim) and intervals (``cron``), stored in Redis under the
project's prefix (``store``), validated and fired as ordinary jobs (``firing``), and their public
API (``api``).
"""
