"""The simulated world: the synthetic population grown into traffic.

It starts from :class:`resilience.population.Population` (a catalog, users with hidden
preferences, long-term profiles for most of them, segments) and adds what a running service
sees: sessions, a stream processor that makes clicks searchable after a delay (longer while it
lags), new users arriving in bursts, and a query stream.

Clicks are drawn from the list actually served, by position bias times the user's hidden
preference (:meth:`Population.clicks`), so a worse list earns fewer clicks. The expected clicks
of any list are known exactly (:meth:`World.expected_clicks`): that is what makes the true lift
known by construction.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Iterator, Sequence

from resilience._model import Candidate
from resilience.population import Population, User

from ._faults import StreamFaults
from ._scenario import WorldOptions

__all__ = ["World"]

#: Depth of the list users look at (and that clicks and diversity are measured on).
DEPTH = 10


class World:
    """A seeded world on a virtual timeline. See the module docstring.

    Args:
        options: the scenario's ``world`` section (already scaled).
        seed: everything random derives from it.
        now: the wall-clock time at virtual time 0.
        stream: the stream processor's lag over time.
    """

    def __init__(self, options: WorldOptions, seed: int, now: float, stream: StreamFaults) -> None:
        self.options = options
        self.population = Population(
            seed,
            categories=options.categories,
            items=options.items,
            users=options.users,
            segments=options.segments,
            favourite_share=options.favourite_share,
            new_user_share=options.new_user_share,
            now=now,
        )
        self.now = now
        self.users: list[User] = list(self.population.users)
        self._stream = stream
        self._new_rng = random.Random(f"{seed}:new-users")
        # Clicks made but not yet applied by the stream processor: (event time, session, item).
        self._pending: deque[tuple[float, str, Candidate]] = deque()
        self._bursts: list[tuple[float, float, float, list[User]]] = []  # start, end, share
        self._new_users = 0
        self.bias = [Population.position_bias(p) for p in range(DEPTH)]

    # --- the stream processor -----------------------------------------------------------------

    def lag(self, t: float) -> float:
        """The stream processor's lag at virtual time ``t``."""
        return self._stream.lag(t)

    def watermark(self, t: float) -> float:
        """Event time (wall seconds) up to which clicks are applied, at virtual time ``t``."""
        return self.now + t - self._stream.lag(t)

    def apply_clicks(self, t: float) -> list[str]:
        """Apply the clicks the stream processor has reached by virtual time ``t``; returns the
        sessions updated (each once, in the order first updated)."""
        watermark = self.watermark(t)
        pending = self._pending
        if not pending or pending[0][0] > watermark:
            return []
        click = self.population.click
        updated: dict[str, None] = {}
        while pending and pending[0][0] <= watermark:
            at, session, candidate = pending.popleft()
            click(session, candidate, at)
            updated[session] = None
        return list(updated)

    # --- traffic ------------------------------------------------------------------------------

    def new_users(self, count: int, start: float, end: float, share: float) -> None:
        """``count`` users never seen before make ``share`` of searches from ``start`` to
        ``end``; they stay afterwards."""
        fresh = [self._new_user() for _ in range(count)]
        self._bursts.append((start, end, share, fresh))

    def _new_user(self) -> User:
        rng = self._new_rng
        categories = self.population.categories
        favourite = rng.choice(categories)
        rest = [rng.random() for _ in categories]
        total = sum(rest)
        share = self.options.favourite_share
        preferences = {
            c: (1 - share) * r / total + (share if c == favourite else 0.0)
            for c, r in zip(categories, rest, strict=True)
        }
        n = self._new_users
        self._new_users += 1
        return User(f"new{n}", f"seg{n % self.options.segments}", preferences, False)

    def _pick_new_user(self, rng: random.Random, t: float) -> User:
        if self._bursts:
            for burst in list(self._bursts):
                start, end, share, fresh = burst
                if t >= end:
                    self.users.extend(fresh)
                    self._bursts.remove(burst)
                elif t >= start and rng.random() < share:
                    return fresh[rng.randrange(len(fresh))]
        return self.users[rng.randrange(len(self.users))]

    def searches(self, rng: random.Random, duration: float) -> Iterator[tuple[float, User, str]]:
        """The query stream up to ``duration``: ``(virtual time, user, session id)``.

        Sessions start as a Poisson process (``rate / session_searches`` per second), each by a
        user drawn at random (a new user's, during a burst, with the burst's share); a session
        makes a geometric number of searches (mean ``session_searches``), ``think`` seconds
        apart on average (exponential), so searches total ``rate`` per second. The process
        starts well before 0, so that traffic is already steady at 0 (those searches are not
        made).
        """
        options = self.options
        starts = options.rate / options.session_searches
        follow = 1.0 / options.session_searches  # chance a search is its session's last
        think = options.think
        pending: list[tuple[float, int, User, str]] = []  # next search of running sessions
        sessions = order = 0
        next_start = -options.session_searches * think * 3
        while True:
            if pending and pending[0][0] < next_start:
                t, _, user, session = heapq.heappop(pending)
            else:
                t = next_start
                next_start += rng.expovariate(starts)
                user = self._pick_new_user(rng, t)
                sessions += 1
                session = f"s{sessions}"
            if t >= duration:
                return
            if rng.random() >= follow:
                order += 1
                heapq.heappush(pending, (t + rng.expovariate(1.0 / think), order, user, session))
            if t >= 0.0:
                yield t, user, session

    def query(self, rng: random.Random) -> tuple[Candidate, ...]:
        """A search's candidates, best first by base (query-relevance) score."""
        return self.population.query(rng, self.options.candidates)

    # --- clicks -------------------------------------------------------------------------------

    def expected_clicks(self, user: User, shown: Sequence[Candidate]) -> float:
        """The expected number of clicks ``user`` makes on ``shown`` (exact)."""
        preferences = user.preferences
        scale = self.options.click_scale
        bias = self.bias
        total = 0.0
        for position, candidate in enumerate(shown[:DEPTH]):
            p = bias[position] * preferences.get(candidate.category or "", 0.0) * scale
            total += p if p < 1.0 else 1.0
        return total

    def click(
        self, rng: random.Random, user: User, session: str, shown: Sequence[Candidate], t: float
    ) -> int:
        """Draw the clicks on ``shown`` and queue them for the stream processor; returns how
        many."""
        positions = self.population.clicks(rng, user, tuple(shown), DEPTH, self.options.click_scale)
        at = self.now + t
        for position in positions:
            self._pending.append((at, session, shown[position]))
        return len(positions)

    def ages_days(self, shown: Sequence[Candidate], t: float) -> list[float]:
        """Ages of the top of ``shown``, in days, at virtual time ``t``."""
        now = self.now + t
        return [
            (now - c.published_at) / 86_400.0
            for c in shown[:DEPTH]
            if c.published_at is not None and math.isfinite(c.published_at)
        ]
