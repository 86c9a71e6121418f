"""The cache's Lua scripts: each is one Redis round trip, atomic on the server.

An entry is a Redis hash: ``g`` the scope generation it was loaded under (empty when unscoped),
``f`` fresh-until in UNIX milliseconds, ``e`` the body's ETag and ``b`` the body (both absent for
a cached "not found"). A lease is a string ``<generation>|<token>`` beside it (``:lease``). The
generation key, the entry and its lease share a Redis Cluster hash tag (the scope's, or the
key's), so each script touches one slot.
"""

from __future__ import annotations

from typing import Final

# KEYS: entry, lease, generation (the entry again when unscoped).
# ARGV: now (ms), lease token, lease TTL (ms), scoped (1/0), a starting generation, its TTL (s).
# Returns {generation, state, etag, body, leased, found}: state is hit (fresh), stale (past
# fresh, same generation) or miss. On stale and miss it takes the lease when free, or when a
# load of an older generation holds it (that load's result can never be read again).
READ: Final = """
local generation = ''
if ARGV[4] == '1' then
  generation = redis.call('GET', KEYS[3])
  if not generation then
    -- first use, evicted or expired: restart from the clock, never from an older number
    generation = ARGV[5]
    redis.call('SET', KEYS[3], generation, 'EX', ARGV[6])
  end
end
local entry = redis.call('HMGET', KEYS[1], 'g', 'f', 'e', 'b')
local state = 'miss'
if entry[2] and entry[1] == generation then
  if tonumber(entry[2]) > tonumber(ARGV[1]) then
    return {generation, 'hit', entry[3] or '', entry[4] or '', 0, entry[4] and 1 or 0}
  end
  state = 'stale'
end
local lease = generation .. '|' .. ARGV[2]
local holder = redis.call('GET', KEYS[2])
local leased = 0
if not holder then
  if redis.call('SET', KEYS[2], lease, 'NX', 'PX', ARGV[3]) then leased = 1 end
elseif string.sub(holder, 1, #generation + 1) ~= generation .. '|' then
  redis.call('SET', KEYS[2], lease, 'PX', ARGV[3])
  leased = 1
end
local found = 0
if state == 'stale' and entry[4] then found = 1 end
return {generation, state, entry[3] or '', entry[4] or '', leased, found}
"""

# Store only while our lease is still ours: an invalidation that ran during the load deleted
# it (or a load of a newer generation took it over), and the value we loaded may predate the
# write. KEYS: entry, lease. ARGV: lease, generation, fresh-until (ms), etag, body, found (1/0),
# hard TTL (ms).
STORE_IF_LEASED: Final = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[1], 'g', ARGV[2], 'f', ARGV[3], 'e', ARGV[4], 'b', ARGV[5])
else
  redis.call('HSET', KEYS[1], 'g', ARGV[2], 'f', ARGV[3])
end
redis.call('PEXPIRE', KEYS[1], ARGV[7])
return 1
"""

RELEASE_LEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Moves a scope to a new generation. A missing counter (first use, evicted, expired) restarts
# from the clock, never from a number an older generation used.
BUMP_GENERATION: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], ARGV[1])
end
local generation = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return generation
"""

# Generation counters outlive any entry keyed by them.
GENERATION_TTL_SECONDS: Final = 86_400
