"""The inference hosts behind the gateway: one `Member` per host, one chosen per request.

A site with several inference hosts lists them all in every gateway's configuration
(``backends``). A request for a model goes to one member, chosen by this rule:

1. Candidates are the members that are not drained (an operator or a rolling deploy took
   them out), not ejected (a connection to them just failed), that answered their last
   check, and — when the checks know their stores — that hold the model.
2. First a member that has the model loaded and a free slot (fewer requests outstanding
   than its ``parallel``): no request pays for a cold load while a warm host is free.
3. Else a member with a free slot: loading the model there beats queueing behind a busy one.
4. Else every slot is taken: the warm member with the fewest requests outstanding (queue
   where the model already is), else the member with the fewest.

Ties go round-robin, so equal members share the load.

The retry rule: a request goes to another member (each member at most once) when its
member could not be reached, closed the connection before the first byte of its answer,
or answered 503 (Ollama's full queue). The client has received nothing at that point.
Once a byte of the answer has gone to the client, a failure is reported to it (a 502 line
in the stream), never retried. A timeout is not retried either: the member may still be
working, and a second host would do the work twice.

A member that could not be reached is ejected: it gets no requests until a check finds it
answering again, first after `EJECT_SECONDS`, then doubling up to `MAX_EJECT_SECONDS`
while it stays unreachable. The periodic checks (``/api/ps`` and ``/api/tags`` on every
member) also keep each member's loaded models and store up to date.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from dataclasses import dataclass
from itertools import count

from .metrics import entries
from .upstream import Upstream, UpstreamError

EJECT_SECONDS = 2.0
MAX_EJECT_SECONDS = 30.0
CHECK_TIMEOUT = 5.0
# The most of an /api/ps or /api/tags answer read (a store of hundreds of models is < 1 MiB).
CHECK_LIMIT = 16 * 1024 * 1024
# A member's name: a metrics label and a word in the admin API.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
MAX_MEMBERS = 64


@dataclass(frozen=True)
class BackendSpec:
    """One inference host's Ollama, as configured."""

    name: str           # the metrics label and the admin API's name for it
    url: str            # http://host:port
    parallel: int = 1   # requests it serves at once (its OLLAMA_NUM_PARALLEL)


def model_key(name: str) -> str:
    """A model name as Ollama compares them: case-folded, ':latest' when no tag is given."""
    name = name.strip().casefold()
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last or not name else f"{name}:latest"


def model_names(answer: dict) -> set[str]:
    """The model keys an /api/ps or /api/tags answer lists (its first 1000 entries, names
    that are strings); ValueError when it has no list of models (not a host that is well)."""
    if not isinstance(answer.get("models"), list):
        raise ValueError("no 'models' list")
    return {model_key(model["name"]) for model in entries(answer)
            if isinstance(model.get("name"), str)}


class Member:
    """One inference host: its connections, what it holds, and how it has been doing."""

    def __init__(self, spec: BackendSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.upstream = Upstream(spec.url)
        self.outstanding = 0
        self.answered = True            # its last check answered (assumed before the first)
        self.store: set[str] | None = None   # its /api/tags; None until a check reads it
        self.loaded: set[str] = set()        # its /api/ps, plus what it has just served
        self.draining = False
        self.ejected_until = 0.0
        self.ejections = 0              # in a row: the next ejection lasts longer
        self.rechecking: asyncio.Task | None = None
        self.answers: dict[str, dict] = {}   # its last /api/ps and /api/tags, for the metrics

    def usable(self, now: float) -> bool:
        return not self.draining and self.answered and now >= self.ejected_until

    def holds(self, model: str) -> bool:
        return self.store is None or model in self.store

    def free(self) -> bool:
        return self.outstanding < self.spec.parallel

    def state(self) -> dict:
        """What the admin API shows of it."""
        now = time.monotonic()
        return {"name": self.name, "url": self.spec.url, "parallel": self.spec.parallel,
                "in_flight": self.outstanding, "draining": self.draining,
                "answering": self.answered,
                "ejected_seconds": round(max(0.0, self.ejected_until - now), 1),
                "loaded": sorted(self.loaded),
                "models": None if self.store is None else len(self.store)}


class NoMember(UpstreamError):
    """No member can take the request (all drained, ejected or already tried): a 503."""


class BackendPool:
    """The members, the choice among them, and their checks."""

    def __init__(self, specs: tuple[BackendSpec, ...], metrics) -> None:
        if not specs:
            raise ValueError("a gateway needs at least one backend")
        self.members = [Member(spec) for spec in specs]
        self.by_name = {member.name: member for member in self.members}
        self.metrics = metrics
        self._turn = count()
        for member in self.members:
            self._publish(member)

    @property
    def single(self) -> bool:
        return len(self.members) == 1

    # --- the choice -----------------------------------------------------------------------

    def choose(self, model: str = "", tried: frozenset[str] = frozenset()) -> Member:
        """The member for a request for `model` ('' for one about no model); NoMember."""
        key = model_key(model) if model else ""
        candidates = self._candidates(key, tried)
        if not candidates:
            raise NoMember(self._why_none(tried))
        start = next(self._turn) % len(candidates)
        rotated = candidates[start:] + candidates[:start]
        warm = [m for m in rotated if key and key in m.loaded]
        for group in ([m for m in warm if m.free()], [m for m in rotated if m.free()],
                      warm, rotated):
            if group:
                return min(group, key=lambda m: m.outstanding)
        raise AssertionError("unreachable: rotated is not empty")

    def has_other(self, model: str, tried: frozenset[str]) -> bool:
        """Another member could take the request (for the retry rule)."""
        return bool(self._candidates(model_key(model) if model else "", tried))

    def _candidates(self, key: str, tried: frozenset[str]) -> list[Member]:
        now = time.monotonic()
        open_ = [m for m in self.members if m.name not in tried and not m.draining]
        candidates = [m for m in open_ if m.usable(now)]
        if not candidates and not tried:
            # Every check failed or every member is ejected: the checks may be stale, and a
            # try costs a refused connection, while a refusal costs the client its request.
            candidates = open_
        if not key:
            return candidates
        holders = [m for m in candidates if m.holds(key)]
        if tried and any(m.store is not None for m in self.members):
            # A retry goes only where the model is: another host's 404 would hide the
            # first one's failure (the client gets a 503 to retry instead).
            return holders
        # A model nobody lists goes anywhere: the host's own 404 then says so.
        return holders or candidates

    def _why_none(self, tried: frozenset[str]) -> str:
        drained = sum(m.draining for m in self.members)
        return (f"no inference host can take the request: {len(self.members)} configured, "
                f"{drained} drained, {len(tried)} already tried")

    def acquire(self, member: Member) -> None:
        member.outstanding += 1
        self.metrics.pool_requests.labels(member.name).inc()
        self.metrics.pool_in_flight.labels(member.name).set(member.outstanding)

    def release(self, member: Member) -> None:
        member.outstanding -= 1
        self.metrics.pool_in_flight.labels(member.name).set(member.outstanding)

    @staticmethod
    def served(member: Member, model: str) -> None:
        """It generated for `model`: the model is loaded there now (until its next check)."""
        if model:
            member.loaded.add(model_key(model))

    def failed(self, member: Member, reason: str, retried: bool = False) -> None:
        """A request to it failed (and went on to another member when `retried`); a member
        that cannot be reached is ejected."""
        self.metrics.pool_errors.labels(member.name, reason).inc()
        if retried:
            self.metrics.pool_retries.labels(member.name).inc()
        if reason == "unreachable":
            self.eject(member)

    def eject(self, member: Member) -> None:
        """Take it out until a check finds it answering. The requests that were in flight
        when it went fail together: one ejection, not one per request."""
        if time.monotonic() < member.ejected_until:
            return
        self._back_off(member)
        self.metrics.pool_ejections.labels(member.name).inc()
        self._publish(member)
        if member.rechecking is None or member.rechecking.done():
            member.rechecking = asyncio.get_running_loop().create_task(self._recheck(member))

    async def _recheck(self, member: Member) -> None:
        """Bring an ejected member back as soon as it answers its checks again."""
        while True:
            await asyncio.sleep(max(0.0, member.ejected_until - time.monotonic()))
            ejected_until = member.ejected_until
            answered = await self.check(member)
            if member.ejected_until != ejected_until:
                continue  # a request failed there during the check: that ejection stands
            if answered:
                member.ejected_until = 0.0
                member.ejections = 0
                self._publish(member)
                return
            self._back_off(member)

    @staticmethod
    def _back_off(member: Member) -> None:
        seconds = min(EJECT_SECONDS * 2 ** member.ejections, MAX_EJECT_SECONDS)
        member.ejections += 1
        member.ejected_until = time.monotonic() + seconds

    # --- drain (the admin API) --------------------------------------------------------------

    def drain(self, name: str, draining: bool) -> Member:
        member = self.by_name[name]
        member.draining = draining
        self._publish(member)
        return member

    def states(self) -> list[dict]:
        return [member.state() for member in self.members]

    # --- checks ---------------------------------------------------------------------------

    async def check_all(self) -> list[Member]:
        """Check every member at once; the members that answered."""
        await asyncio.gather(*(self.check(member) for member in self.members))
        return [member for member in self.members if member.answered]

    async def check(self, member: Member) -> bool:
        """Read its /api/ps and /api/tags; False (and not answering) if either fails."""
        try:
            ps = await self.read_json(member, "/api/ps")
            tags = await self.read_json(member, "/api/tags")
            loaded, store = model_names(ps), model_names(tags)
        except asyncio.CancelledError:
            raise
        except Exception:  # any bad answer is a member that is not well
            member.answered = False
        else:
            member.answered, member.loaded, member.store = True, loaded, store
            member.answers = {"ps": ps, "tags": tags}
        self._publish(member)
        return member.answered

    @staticmethod
    async def read_json(member: Member, path: str, timeout: float = CHECK_TIMEOUT) -> dict:
        async with asyncio.timeout(timeout * 2):  # a member that drips bytes holds nothing
            answer = await member.upstream.request("GET", path, timeout=timeout,
                                                   idle_timeout=timeout)
            data = json.loads(await answer.read(limit=CHECK_LIMIT))
        if answer.status != 200 or not isinstance(data, dict):
            raise UpstreamError(f"{path} answered {answer.status}")
        return data

    def _publish(self, member: Member) -> None:
        now = time.monotonic()
        self.metrics.pool_up.labels(member.name).set(int(member.usable(now)))
        self.metrics.pool_draining.labels(member.name).set(int(member.draining))

    async def close(self) -> None:
        for member in self.members:
            if member.rechecking is not None:
                member.rechecking.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await member.rechecking
            await member.upstream.close()
