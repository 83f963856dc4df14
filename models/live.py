"""Live state shared through Redis: the leaderboard cache, counters and channels.

PostgreSQL stays the source of truth. Workers update this cache after they commit, and the
realtime servers read it; every write is guarded by the team row's version so updates that
arrive out of order (two queues finishing for one team) can never move a team backwards,
and a rebuild from PostgreSQL is always safe.

A board is only trusted once a rebuild from PostgreSQL has marked it complete (a field in its
hash, so it vanishes with the hash when Redis loses its data). A worker's update after such a
loss still writes its team, but cannot make the board look whole: readers see no mark and
rebuild it from PostgreSQL, and rank look-ups answer "unknown" until then.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from models.events import Message, encode, iso
from settings import Settings

__all__ = ["COMPLETE", "FrozenBoards", "Live", "Standing", "competition_room", "iso", "organisers_room",
           "redis_client", "team_room", "utcnow"]

# The hash field a full rebuild sets; no team id can collide with it.
COMPLETE = "_complete"

# KEYS: zset, hash. ARGV: team id, version, member, points, name, visible.
_UPDATE = """
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if cur then
  local old = cjson.decode(cur)
  if tonumber(old['v']) >= tonumber(ARGV[2]) then return 0 end
  redis.call('ZREM', KEYS[1], old['m'])
end
if ARGV[6] == '1' then
  redis.call('ZADD', KEYS[1], -tonumber(ARGV[4]), ARGV[3])
end
redis.call('HSET', KEYS[2], ARGV[1],
  cjson.encode({v = tonumber(ARGV[2]), m = ARGV[3], p = tonumber(ARGV[4]), n = ARGV[5]}))
return 1
"""

# KEYS: zset, hash. ARGV: limit. Returns a flat list: name, points, name, points, ...
_TOP = """
local members = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
local out = {}
for _, m in ipairs(members) do
  local id = string.match(m, ':(%d+)$')
  local row = cjson.decode(redis.call('HGET', KEYS[2], tostring(tonumber(id))))
  table.insert(out, row['n'])
  table.insert(out, row['p'])
end
return out
"""

# KEYS: zset, hash. ARGV: team id. The 0-based rank, or nil for a hidden or unknown team, or
# while the board is not known to be complete (a rank on part of a board would flatter).
_RANK = """
if redis.call('HEXISTS', KEYS[2], '_complete') == 0 then return nil end
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if not cur then return nil end
return redis.call('ZRANK', KEYS[1], cjson.decode(cur)['m'])
"""



def redis_client(url: str, max_connections: int = 64) -> redis.Redis:
    """A client whose pool makes callers wait for a free connection rather than fail.

    Thousands of greenlets (realtime) or dozens of threads (API) can want Redis at once; a
    plain pool raises "Too many connections" past its limit, a blocking one queues them.
    While Redis is down a call fails within about a second (connection refused, one retry).
    """
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=10, socket_timeout=5, socket_connect_timeout=5,
        health_check_interval=30,
        # One quick retry covers a pooled connection that a Redis restart closed. redis-py's default
        # (three, backing off up to 10 s) would hold every request for half a minute while Redis is
        # down, where a prompt 503 with Retry-After is the answer.
        retry=Retry(ExponentialBackoff(cap=0.25, base=0.05), 1),
    )
    return redis.Redis(connection_pool=pool)


@dataclass(frozen=True)
class Standing:
    team_id: int
    name: str
    points: int
    version: int
    reached_at: datetime
    visible: bool = True


def _member(standing: Standing) -> str:
    micros = int(standing.reached_at.timestamp() * 1_000_000)
    return f"{micros:017d}:{standing.team_id}"


def utcnow() -> datetime:
    return datetime.now(UTC)


# Takes the messages of jobs this consumer has just committed off its queue's list, oldest first.
# KEYS[1]: the queue's list (kombu's Redis layout: pushed on the left, taken from the right).
# ARGV[1]: how many messages from the oldest end to look at; ARGV[2...]: the jobs' ids, which are
# their tasks' ids (``models.broker.task_message``). Returns the ids whose message it removed. A message is
# removed only if its job is among those committed, so nothing not yet applied can be lost; a
# message the worker has already taken is not in the list and comes as usual.
ABSORB = """
local want = {}
for i = 2, #ARGV do want[ARGV[i]] = true end
local n = math.min(redis.call('LLEN', KEYS[1]), tonumber(ARGV[1]))
if n == 0 then return {} end
local items = redis.call('LRANGE', KEYS[1], -n, -1)
local removed = {}
for i = #items, 1, -1 do
  local id = string.match(items[i], '"id": ?"([%x%-]+)"')
  if id and want[id] then
    redis.call('LREM', KEYS[1], -1, items[i])
    removed[#removed + 1] = id
  end
end
return removed
"""


class Live:
    """Redis-backed live state for one process; cheap to share across threads."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.prefix = settings.redis_prefix
        self.redis = client or redis_client(settings.redis_url)
        self._update = self.redis.register_script(_UPDATE)
        self._top = self.redis.register_script(_TOP)
        self._rank = self.redis.register_script(_RANK)
        self._absorb = self.redis.register_script(ABSORB)

    @property
    def changes_channel(self) -> str:
        return f"{self.prefix}:changes"

    @property
    def jobs_channel(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def socketio_channel(self) -> str:
        return f"{self.prefix}:socketio"

    def _keys(self, competition_id: int) -> list[str]:
        return [f"{self.prefix}:lb:{competition_id}", f"{self.prefix}:lbt:{competition_id}"]

    def update(self, competition_id: int, standings: list[Standing], pipe: Any = None) -> None:
        """Patch some teams' standings (a worker after its commit).

        On a pipeline the script is called by its SHA alone: run the pipeline with ``execute``.
        """
        if not standings:
            return
        keys = self._keys(competition_id)
        target = pipe if pipe is not None else self.redis.pipeline(transaction=False)
        for s in standings:
            target.evalsha(self._update.sha, 2, *keys,
                           s.team_id, s.version, _member(s), s.points, s.name, "1" if s.visible else "0")
        if pipe is None:
            self.execute(target)

    def execute(self, pipe: Any, raise_on_error: bool = True) -> list[Any]:
        """Run a pipeline whose scripts are called by SHA, as ``update`` and ``queue_rank`` queue them.

        redis-py would ask Redis whether it knows a pipeline's scripts (SCRIPT EXISTS) before
        every pipeline: one round trip more per batch. Redis forgets them only when it restarts
        or is flushed; then the scripts are loaded and just their calls run again, which is safe
        because each is guarded by the team's version or only reads. The first error is raised
        once every command has run, as ``pipe.execute()`` does (or, ``raise_on_error=False``, left
        in its place among the results).
        """
        stack = list(pipe.command_stack)
        results = pipe.execute(raise_on_error=False)
        missing = [i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]
        if missing:
            for script in (self._update, self._top, self._rank, self._absorb):
                self.redis.script_load(script.script)
            again = self.redis.pipeline(transaction=False)
            for i in missing:
                args, options = stack[i]
                again.execute_command(*args, **options)
            for i, result in zip(missing, again.execute(raise_on_error=False), strict=True):
                results[i] = result
        for result in results if raise_on_error else ():
            if isinstance(result, Exception):
                raise result
        return results

    def queue_absorb(self, queue: str, job_ids: list[str], pipe: Any) -> None:
        """Queue the removal of these committed jobs' messages from ``queue`` (``ABSORB``);
        its result, in ``execute``'s, is the ids whose message it removed."""
        pipe.evalsha(self._absorb.sha, 1, queue, 2 * len(job_ids) + 16, *job_ids)

    def rebuild(self, competition_id: int, standings: list[Standing]) -> None:
        """Write every team of the competition, read from PostgreSQL, and mark the board complete.

        The mark goes last: a reader that arrives meanwhile rebuilds too, which is harmless, as
        every write is guarded by the team's version.
        """
        pipe = self.redis.pipeline(transaction=False)
        self.update(competition_id, standings, pipe)
        pipe.hset(self._keys(competition_id)[1], COMPLETE, "1")
        self.execute(pipe)

    def top(self, competition_id: int, limit: int) -> list[dict[str, Any]]:
        flat = self._top(keys=self._keys(competition_id), args=[limit])
        return [
            {"rank": i + 1, "teamName": _text(flat[2 * i]), "points": int(flat[2 * i + 1])}
            for i in range(len(flat) // 2)
        ]

    def queue_rank(self, competition_id: int, team_id: int, pipe: Any) -> None:
        """Queue a rank look-up on a pipeline; its result is the 0-based rank or None."""
        pipe.evalsha(self._rank.sha, 2, *self._keys(competition_id), team_id)

    def boards_complete(self, competition_ids: Sequence[int]) -> list[bool]:
        """``has_board`` for many competitions, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for competition_id in competition_ids:
            pipe.hexists(self._keys(competition_id)[1], COMPLETE)
        return [bool(found) for found in pipe.execute()] if competition_ids else []

    def has_board(self, competition_id: int) -> bool:
        """Whether the cached board is whole (rebuilt from PostgreSQL since Redis last lost it)."""
        return bool(self.redis.hexists(self._keys(competition_id)[1], COMPLETE))

    def clear(self, competition_id: int) -> None:
        self.redis.delete(*self._keys(competition_id))

    def _wrong_key(self, team_id: int) -> str:
        return f"{self.prefix}:wrong:{team_id}:{int(time.time() // 60)}"

    def count_wrong_answer(self, team_id: int, pipe: Any) -> None:
        pipe.incr(self._wrong_key(team_id))
        pipe.expire(self._wrong_key(team_id), 120)

    def wrong_answers(self, team_id: int) -> tuple[int, float]:
        """Wrong answers this minute, and the seconds until the minute ends."""
        raw = self.redis.get(self._wrong_key(team_id))
        return (int(raw) if raw else 0), 60 - time.time() % 60

    def publish_change(self, message: Message) -> None:
        """Publish a ``models.events`` message on the changes channel the realtime servers read."""
        self.redis.publish(self.changes_channel, encode(message))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def team_room(owner_hash: bytes) -> str:
    """The private room of whoever holds a token; known before the team row exists."""
    return "team:" + owner_hash.hex()[:32]


def competition_room(slug: str) -> str:
    return "competition:" + slug


def organisers_room(slug: str) -> str:
    return "organisers:" + slug


class FrozenBoards:
    """The frozen standings of a competition, computed once per freeze time and shared."""

    def __init__(self, live: Live) -> None:
        self.live = live

    def key(self, competition_id: int, freeze_at: datetime) -> str:
        return f"{self.live.prefix}:lbfrozen:{competition_id}:{int(freeze_at.timestamp() * 1000)}"

    def get(self, competition_id: int, freeze_at: datetime) -> list[dict[str, Any]] | None:
        raw = self.live.redis.get(self.key(competition_id, freeze_at))
        return None if raw is None else json.loads(raw)

    def put(self, competition_id: int, freeze_at: datetime, board: list[dict[str, Any]]) -> None:
        self.live.redis.set(self.key(competition_id, freeze_at), json.dumps(board), ex=7 * 24 * 3600)
