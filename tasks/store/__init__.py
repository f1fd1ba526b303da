"""Everything the project keeps in Redis: jobs, the due set, the rate limiter, metrics.

The key schema of the whole prefix, in one place. ``{p}`` is ``RECORDER_KEY_PREFIX``
(``recorder``); the job records and their indexes expire with ``RECORDER_JOB_TTL``.

==============================  ======  =========================================================
key                             type    holds (written by)
==============================  ======  =========================================================
``{p}:job:{id}``                string  the job record, JSON (``jobs``); expires ``ttl_s`` after
                                        its creation
``{p}:idem:{key}``              string  the job id of an idempotency key; expires with the job
``{p}:jobs``                    zset    every job id by creation ms
``{p}:room:{room_id}``          zset    the room's job ids by creation ms; expires with the newest
``{p}:status:{status}``         zset    job ids in that status, by creation ms
``{p}:due``                     zset    ids waiting for a time, by due ms: scheduled jobs,
                                        deferred retries, stranded jobs found by the sweeper
``{p}:orphan:{room_id}``        string  recording state of a room's webhook events that matched
                                        no start job, JSON; expires with the record TTL
``{p}:reconcile``               zset    succeeded start and stop job ids whose recording is to
                                        be looked up at the API if still unknown, by due ms
``{p}:lease:{id}``              string  the token of the delivery working on the job; short PX
``{p}:held``                    zset    ids of jobs a delivery has claimed, by claim ms
``{p}:lock:sweep``              string  one dispatcher sweeps at a time; PX of a sweep interval
``{p}:claimed_pub``             string  the delivery watermark: the latest publish ms of a
                                        claimed job (messages published well before it have
                                        left the queue); EX 1 day
``{p}:metrics``                 hash    API calls, latency buckets and waits of every worker,
                                        recordings by the status they reached
                                        (``metrics``); no TTL: counters, like Prometheus's
``{p}:rl:tat``                  string  the GCRA theoretical arrival time, µs (``ratelimit``)
``{p}:rl:cooldown``             string  until when nobody may call after a Retry-After, µs
``{p}:rl:aimd``                 hash    ``factor`` and ``ts`` of the last rate decrease
``{p}:schedules``               hash    recurring schedules by name, and ``{p}:schedules:last``
                                        (hash) and ``{p}:schedules:due`` (zset) beside it: written
                                        by ``tasks.schedules.store`` (its docstring lists them)
``{p}:redbeat::lock``           string  beat's lock: celery-redbeat's key (``redbeat_key_prefix``),
                                        written by redbeat alone
==============================  ======  =========================================================

Outside the prefix, kombu keeps the broker's state under its own names (the queue list named
``RECORDER_QUEUE``, ``unacked``, ``unacked_index``, ``_kombu.binding.*``): only kombu writes
them; we read the queue's depth through kombu (``worker.publish.queue_depth``).

The rate-limit keys carry TTLs, so a quiet system holds none of them. The job keys are changed
only by the atomic Lua scripts of :mod:`tasks.store.scripts`.
"""
