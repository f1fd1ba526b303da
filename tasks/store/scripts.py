"""The job store's Lua scripts: each change of a job is one atomic script, one round trip.

Module constants with their KEYS and ARGV in a comment above each; :mod:`tasks.store` registers
and calls them, and the key schema they share is in :mod:`tasks.store`.
"""

from __future__ import annotations

from tasks.store.ratelimit import GCRA_LUA
from tasks.window import SEND_MARGIN_S

# cjson escapes every "/" as "\/" (JSON allows it, never needs it): URLs in records would grow
# by a byte per slash. Every script encodes records with ``enc`` instead, and a JSON null in a
# patch removes the field (``Job`` reads a missing field as None), so records carry no nulls.
ENC_LUA = """
local function enc(t) return (string.gsub(cjson.encode(t), '\\\\/', '/')) end
"""

# KEYS[1] job, KEYS[2] idem (a placeholder when none), KEYS[3] jobs, KEYS[4] room,
# KEYS[5] status index, KEYS[6] due
# ARGV[1] id, ARGV[2] record, ARGV[3] ttl_s, ARGV[4] created ms, ARGV[5] "1" if idempotent,
# ARGV[6] due ms ("" = due now), ARGV[7] prefix
# A scheduled job enters the due set with its record; a queued one is published by the caller
# afterwards (a caller that dies first leaves the job for the sweeper: SWEEP_LUA).
# Returns the id of the job now stored for that key: ARGV[1], or the existing one.
CREATE_LUA = """
if ARGV[5] == '1' then
  local existing = redis.call('GET', KEYS[2])
  if existing and redis.call('EXISTS', ARGV[7] .. ':job:' .. existing) == 1 then
    return existing
  end
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[3])
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
local score = tonumber(ARGV[4])
local cutoff = score - tonumber(ARGV[3]) * 1000
for i = 3, 5 do
  redis.call('ZADD', KEYS[i], score, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', cutoff)
end
redis.call('EXPIRE', KEYS[4], ARGV[3])
if ARGV[6] ~= '' then redis.call('ZADD', KEYS[6], ARGV[6], ARGV[1]) end
return ARGV[1]
"""

# KEYS[1] job, KEYS[2] lease, KEYS[3] (optional) a rate limiter's cool-down key: while its
# cool-down lasts (microseconds since the epoch, Redis TIME) the change is refused ("cooldown")
# ARGV[1] prefix, ARGV[2] id, ARGV[3] allowed current statuses as " a b " ("" = any),
# ARGV[4] patch (JSON object merged into the record), ARGV[5] lease token that must hold the
# lease ("" = no check), ARGV[6] "1" to count an attempt, ARGV[7] due: "" keep, "-" remove,
# else ms to wait in the due set until, ARGV[8] lease: "" keep, "release", else ms to renew,
# ARGV[9] index cutoff ms (creation times before it are expired), ARGV[10] metrics hash ("" =
# none) and ARGV[11..] its field, increment pairs: the counters of the calls this change
# reports. The counters are added whether or not the change applies: the calls were made.
# Returns {1, record} when applied, else {0, reason, record or nil}.
UPDATE_LUA = (
    ENC_LUA
    + """
if ARGV[10] ~= '' then
  for i = 11, #ARGV, 2 do redis.call('HINCRBY', ARGV[10], ARGV[i], ARGV[i + 1]) end
end
local raw = redis.call('GET', KEYS[1])
if not raw then return {0, 'missing'} end
if ARGV[5] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[5] then return {0, 'lease_lost', raw} end
local rec = cjson.decode(raw)
local old = rec.status
if ARGV[3] ~= '' and not string.find(ARGV[3], ' ' .. old .. ' ', 1, true) then
  return {0, 'status', raw}
end
if KEYS[3] then
  local t = redis.call('TIME')
  local until_us = tonumber(redis.call('GET', KEYS[3]) or '0')
  if until_us > tonumber(t[1]) * 1000000 + tonumber(t[2]) then return {0, 'cooldown', raw} end
end
for k, v in pairs(cjson.decode(ARGV[4])) do
  if v == cjson.null then rec[k] = nil else rec[k] = v end
end
if ARGV[6] == '1' then rec.attempts = (rec.attempts or 0) + 1 end
if ARGV[7] == '-' then
  rec._due = nil
  redis.call('ZREM', ARGV[1] .. ':due', ARGV[2])
elseif ARGV[7] ~= '' then
  rec._due = tonumber(ARGV[7])
  redis.call('ZADD', ARGV[1] .. ':due', ARGV[7], ARGV[2])
end
if ARGV[8] == 'release' then
  if redis.call('GET', KEYS[2]) == ARGV[5] then redis.call('DEL', KEYS[2]) end
  rec._holder = nil
  redis.call('ZREM', ARGV[1] .. ':held', ARGV[2])
elseif ARGV[8] ~= '' then
  redis.call('PEXPIRE', KEYS[2], ARGV[8])
end
local out = enc(rec)
redis.call('SET', KEYS[1], out, 'KEEPTTL')
if rec.status ~= old then
  redis.call('ZREM', ARGV[1] .. ':status:' .. old, ARGV[2])
  local index = ARGV[1] .. ':status:' .. rec.status
  redis.call('ZADD', index, rec._ts, ARGV[2])
  redis.call('ZREMRANGEBYSCORE', index, '-inf', ARGV[9])
end
return {1, out}
"""
)

# KEYS[1] job, KEYS[2] lease, KEYS[3] held, KEYS[4..6] the rate limiter's (tat, cooldown, aimd)
# ARGV[1] lease token, ARGV[2] lease ms, ARGV[3] now ms, ARGV[4] token of a holder known to be
# dead, whose lease may be taken over ("" = none), ARGV[5] job id, ARGV[6] "1" to also begin
# the first attempt if a rate slot is free right now, ARGV[7] now as ISO 8601, ARGV[8] prefix,
# ARGV[9] most attempts, ARGV[10] most lost deliveries, ARGV[11..15] the GCRA step's args
# Returns {kind, record, lease pttl, holder} or {'claimed', record, began 0/1}: kind is claimed,
# finished, not_due, leased, window_closed (the start window's ``_deadline`` has passed and no live
# delivery holds the job: nothing is written, the runner ends it ``expired``) or missing. The same
# token claiming again (a retry after a lost reply) gets the same claim back, and whether it began
# the attempt (``_begun``). A claim raises ``{prefix}:claimed_pub`` (the delivery watermark) to the
# job's last publish time (``_touched``): every message published well before it has left the queue
# (SWEEP_LUA). A claim that finds ``_holder`` still set knows the last delivery died without
# finishing (a killed worker): it counts it in ``lost_deliveries``.
# Beginning an attempt is the same write-ahead as the runner's own (status running, in_flight,
# attempts + 1) after taking a rate slot (tasks.store.ratelimit.GCRA_LUA), done here to save two
# round trips; it is skipped when the delivery will not call (attempts or lost deliveries used up:
# the runner fails the job instead) and when no slot is free at once (the runner waits).
CLAIM_LUA = (
    GCRA_LUA
    + ENC_LUA
    + """
local raw = redis.call('GET', KEYS[1])
if not raw then return {'missing'} end
local rec = cjson.decode(raw)
local s = rec.status
if s == 'succeeded' or s == 'failed' or s == 'cancelled' or s == 'expired' then
  return {'finished', raw}
end
if s == 'scheduled' or (rec._due and rec._due > tonumber(ARGV[3])) then
  return {'not_due', raw}
end
local holder = redis.call('GET', KEYS[2])
if holder == ARGV[1] and rec._holder == ARGV[1] then
  -- this claim again: a retry whose first try landed (its reply was lost)
  return {'claimed', raw, rec._begun == ARGV[1] and 1 or 0}
end
if holder then
  if holder ~= ARGV[4] then return {'leased', raw, redis.call('PTTL', KEYS[2]), holder} end
  redis.call('DEL', KEYS[2])
end
-- no attempt begins in the window's last SEND_MARGIN_MS ms (tasks.window.SEND_MARGIN_S)
if rec._deadline and tonumber(ARGV[3]) > rec._deadline - SEND_MARGIN_MS then
  return {'window_closed', raw}
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[5])
local published = rec._touched or rec._ts
local watermark_key = ARGV[8] .. ':claimed_pub'
-- moved to the second only: the sweep needs no finer, and most claims then write nothing
if published > tonumber(redis.call('GET', watermark_key) or '0') + 1000 then
  redis.call('SET', watermark_key, published, 'EX', 86400)
end
if rec._holder then rec.lost_deliveries = (rec.lost_deliveries or 0) + 1 end
rec._holder = ARGV[1]
rec.deliveries = (rec.deliveries or 0) + 1
local began = 0
if ARGV[6] == '1' and (rec.attempts or 0) - (rec._base or 0) < tonumber(ARGV[9])
    and (rec.lost_deliveries or 0) < tonumber(ARGV[10])
    and gcra({KEYS[4], KEYS[5], KEYS[6]}, {ARGV[11], ARGV[12], ARGV[13], ARGV[14], ARGV[15]})[2]
      == 1 then
  began = 1
  rec._begun = ARGV[1]
  if rec.in_flight then rec.maybe_started = true end
  if s ~= 'running' then
    redis.call('ZREM', ARGV[8] .. ':status:' .. s, ARGV[5])
    redis.call('ZADD', ARGV[8] .. ':status:running', rec._ts, ARGV[5])
  end
  if rec._due then redis.call('ZREM', ARGV[8] .. ':due', ARGV[5]) end
  rec.status = 'running'
  rec.in_flight = true
  rec.attempts = (rec.attempts or 0) + 1
  rec.error = nil
  rec.next_attempt_at = nil
  rec._due = nil
  rec.updated_at = ARGV[7]
  rec._touched = tonumber(ARGV[3])
end
local out = enc(rec)
redis.call('SET', KEYS[1], out, 'KEEPTTL')
return {'claimed', out, began}
"""
).replace("SEND_MARGIN_MS", str(round(SEND_MARGIN_S * 1000)))

# KEYS[1] due
# ARGV[1] now ms, ARGV[2] most ids, ARGV[3] ms until an unconfirmed dispatch is retried,
# ARGV[4] prefix, ARGV[5] now as ISO 8601
# Takes the due jobs: scheduled ones become queued; each stays in the due set, pushed back by
# ARGV[3], until DISPATCHED_LUA confirms its message was published (so a crash between the two
# re-dispatches it instead of losing it). Returns a flat list of id, room id pairs.
POP_DUE_LUA = (
    ENC_LUA
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for _, id in ipairs(ids) do
  local key = ARGV[4] .. ':job:' .. id
  local raw = redis.call('GET', key)
  local rec = raw and cjson.decode(raw)
  if not rec or rec.status == 'succeeded' or rec.status == 'failed'
      or rec.status == 'cancelled' or rec.status == 'expired' then
    redis.call('ZREM', KEYS[1], id)
  else
    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[3]), id)
    if rec.status == 'scheduled' then
      redis.call('ZREM', ARGV[4] .. ':status:scheduled', id)
      redis.call('ZADD', ARGV[4] .. ':status:queued', rec._ts, id)
      rec.status = 'queued'
      rec.updated_at = ARGV[5]
    end
    rec._due = nil
    rec._touched = tonumber(ARGV[1])
    redis.call('SET', key, enc(rec), 'KEEPTTL')
    table.insert(out, id)
    table.insert(out, rec.room_id)
  end
end
return out
"""
)

# KEYS[1] due; ARGV: pairs of id, the score POP_DUE_LUA gave it. Removes each id whose score is
# unchanged (a job deferred again meanwhile keeps its new time).
DISPATCHED_LUA = """
for i = 1, #ARGV, 2 do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return 1
"""

# KEYS[1] due, KEYS[2] held, KEYS[3] the delivery watermark (CLAIM_LUA's ``claimed_pub``)
# ARGV[1] prefix, ARGV[2] now ms, ARGV[3] ms a job whose holder vanished must have been left
# alone, ARGV[4] the same for a job nobody claimed (the last resort), ARGV[5] ms after which an
# unclaimed job's message counts as lost when the evidence says so, ARGV[6] "1" when the broker
# queue is empty, ARGV[7..] ids
# A job is stranded when it is not finished, nobody holds its lease and it is not waiting in the
# due set, and either a delivery claimed it and died (``_holder`` is still set: a killed worker)
# or its message is gone: quiet for ARGV[5] ms while the queue is empty, or published (``_touched``)
# more than ARGV[5] ms before a job a worker has already claimed (the queue is first in, first
# out, so its message was taken: by a worker that acked it without a claim, or one that died
# holding it), or quiet for ARGV[4] ms whatever the evidence. Each stranded job is put in the due
# set for the dispatcher and marked ``_swept``, so it is not put there again before that time
# has passed once more.
SWEEP_LUA = (
    ENC_LUA
    + """
local now = tonumber(ARGV[2])
local lost = tonumber(ARGV[5])
local watermark = tonumber(redis.call('GET', KEYS[3]) or '0')
local found = 0
for i = 7, #ARGV do
  local id = ARGV[i]
  local key = ARGV[1] .. ':job:' .. id
  local raw = redis.call('GET', key)
  local rec = raw and cjson.decode(raw)
  local live = rec and (rec.status == 'queued' or rec.status == 'running'
                        or rec.status == 'retrying')
  if not live or not rec._holder then redis.call('ZREM', KEYS[2], id) end
  if live and not rec._due and redis.call('EXISTS', ARGV[1] .. ':lease:' .. id) == 0 then
    local published = rec._touched or rec._ts
    local since = math.max(rec._swept or 0, published)
    local stranded
    if rec._holder then
      stranded = since < now - tonumber(ARGV[3])
    else
      stranded = since < now - tonumber(ARGV[4])
        or (since < now - lost and (ARGV[6] == '1' or published < watermark - lost))
    end
    if stranded then
      rec._swept = now
      rec._due = now
      redis.call('ZADD', KEYS[1], now, id)
      redis.call('SET', key, enc(rec), 'KEEPTTL')
      found = found + 1
    end
  end
end
return found
"""
)

# KEYS[1] the room's job index (``{prefix}:room:{room}``)
# ARGV[1] prefix, ARGV[2] room id, ARGV[3] event type, ARGV[4] the recording status it means
# ("" for a session event), ARGV[5] session id, ARGV[6] file URL, ARGV[7] file path ("" = not
# given), ARGV[8] now as ISO 8601, ARGV[9] now ms, ARGV[10] record TTL s
# One webhook event, applied to the room's most recent start job: of its last 20 jobs, the newest
# start that succeeded or is running or retrying, else the newest that made a call (a refused
# duplicate start is not the recording), else the newest. A recording status moves only
# forward (RECORDING_RANK): an event ranking at or below the current status changes nothing, so
# duplicates and late arrivals are harmless. Each move counts in the metrics hash
# (``recordings:{status}``).
# ``session-started`` makes a start job waiting for the room to go live (``retrying`` /
# ``not_live``) due now. A recording event for a room with no start job is kept in
# ``{prefix}:orphan:{room}`` (same merge, the record TTL), so a lookup still answers. The
# recording stores ``started_at``; its ``updated_at`` (the time of its last move: when it stopped
# or failed, for those) is the job's own, set with it; nothing null, to keep each record small.
# Returns {outcome, record or state JSON, previous recording status or ""}: outcome is applied,
# unchanged, woken, noted (a session event with nothing to do), orphan or orphan_unchanged.
APPLY_EVENT_LUA = (
    ENC_LUA
    + """
local RANK = {starting = 1, started = 2, stopping = 3, stopped = 4, failed = 4}
local function merge(cur)
  local r = cur or {}
  r.status = ARGV[4]
  if ARGV[5] ~= '' then r.session_id = ARGV[5] end
  if ARGV[6] ~= '' then r.file_url = ARGV[6] end
  if ARGV[7] ~= '' then r.file_path = ARGV[7] end
  if ARGV[4] == 'started' then r.started_at = ARGV[8] end
  return r
end
local function forward(cur)
  local current = 0
  if type(cur) == 'table' then current = RANK[cur.status] or 0 end
  return RANK[ARGV[4]] > current
end
local ids = redis.call('ZREVRANGE', KEYS[1], 0, 19)
local id, rec, raw
local rank = 0
for _, candidate in ipairs(ids) do
  local found = redis.call('GET', ARGV[1] .. ':job:' .. candidate)
  if found then
    local r = cjson.decode(found)
    if (r.kind or 'start') == 'start' then
      -- newest first; better: one that made a call, best: one that started or may still
      local better = 1
      if (r.attempts or 0) > 0 then better = 2 end
      if r.status == 'succeeded' or r.status == 'running' or r.status == 'retrying' then
        better = 3
      end
      if better > rank then id, rec, raw, rank = candidate, r, found, better end
      if rank == 3 then break end
    end
  end
end
if ARGV[4] == '' then
  if ARGV[3] == 'session-started' and rec and rec.status == 'retrying'
      and type(rec.error) == 'table' and rec.error.type == 'not_live' then
    rec._due = tonumber(ARGV[9])
    rec.next_attempt_at = ARGV[8]
    redis.call('ZADD', ARGV[1] .. ':due', ARGV[9], id)
    raw = enc(rec)
    redis.call('SET', ARGV[1] .. ':job:' .. id, raw, 'KEEPTTL')
    return {'woken', raw, ''}
  end
  return {'noted', raw or '', ''}
end
if not rec then
  local key = ARGV[1] .. ':orphan:' .. ARGV[2]
  local old = redis.call('GET', key)
  local state = old and cjson.decode(old)
  if state and not forward(state) then return {'orphan_unchanged', old, state.status} end
  local merged = merge(state)
  merged.updated_at = ARGV[8]
  local out = enc(merged)
  redis.call('SET', key, out, 'EX', ARGV[10])
  return {'orphan', out, state and state.status or ''}
end
if not forward(rec.recording) then
  return {'unchanged', raw, type(rec.recording) == 'table' and rec.recording.status or ''}
end
local previous = type(rec.recording) == 'table' and rec.recording.status or ''
rec.recording = merge(type(rec.recording) == 'table' and rec.recording or nil)
rec.updated_at = ARGV[8]
local out = enc(rec)
redis.call('SET', ARGV[1] .. ':job:' .. id, out, 'KEEPTTL')
redis.call('HINCRBY', ARGV[1] .. ':metrics', 'recordings:' .. ARGV[4], 1)
return {'applied', out, previous}
"""
)

# KEYS[1] reconcile zset; ARGV[1] now ms, ARGV[2] most ids
# Takes the due ids (each to one caller: they are removed as they are handed out).
POP_RECONCILE_LUA = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do redis.call('ZREM', KEYS[1], id) end
return ids
"""
