"""A synthetic population: a catalog, users with hidden preferences, and clicks on what is shown.

For demonstrations, experiments and (later) the simulator: the same seed gives the same world.

- **Catalog**: items with a category, a quality (their query relevance) and a publication time
  (ages drawn exponentially, mean ``mean_age``).
- **Users**: each has hidden category preferences, concentrated on a favourite category by
  ``favourite_share`` (the filter-bubble case); most have a long-term profile (a noisy estimate of
  their preferences), the rest are new; every user belongs to a segment, whose preferences are
  the mean of its members'.
- **Queries**: a sample of the catalog, base-scored by quality plus noise.
- **Clicks**: drawn from the list actually shown, position by position, with probability
  ``position bias * preference for the item's category`` (position bias ``1 / log2(pos + 2)``),
  so a list that shows what users like earns more clicks, and one that shows only that, less
  discovery.

:meth:`Population.sources` gives in-memory stores to bind to an engine; :meth:`Population.click`
updates the user's session as the stream processor would, so personalization learns as users
browse.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ._model import Affinities, Candidate, Click, SessionState
from ._sources import MemorySource

__all__ = ["Item", "Population", "User"]


@dataclass(frozen=True, slots=True)
class Item:
    """One catalog item."""

    item_id: str
    category: str
    quality: float
    published_at: float


@dataclass(frozen=True, slots=True)
class User:
    """One user, with preferences the engine never sees directly."""

    user_id: str
    segment: str
    preferences: dict[str, float]
    has_profile: bool


class Population:
    """A seeded synthetic world. See the module docstring.

    Args:
        seed: everything random derives from it.
        categories: how many categories the catalog has.
        items: catalog size.
        users: how many users.
        segments: how many segments users fall into.
        favourite_share: the share of a user's preference on their favourite category.
        new_user_share: the share of users without a long-term profile.
        mean_age: mean item age, in seconds.
        now: the wall-clock time the world is at.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        categories: int = 8,
        items: int = 400,
        users: int = 200,
        segments: int = 4,
        favourite_share: float = 0.6,
        new_user_share: float = 0.2,
        mean_age: float = 60 * 86_400.0,
        now: float = 1_700_000_000.0,
    ) -> None:
        rng = random.Random(seed)
        self.now = now
        self.categories = [f"cat{n}" for n in range(categories)]
        self.items = [
            Item(
                f"item{n}",
                rng.choice(self.categories),
                rng.random(),
                now - rng.expovariate(1.0 / mean_age),
            )
            for n in range(items)
        ]
        self.users = [
            self._user(rng, n, segments, favourite_share, new_user_share) for n in range(users)
        ]
        self._rng = rng
        self.sessions: MemorySource[SessionState] = MemorySource()
        self.profiles: MemorySource[Affinities] = MemorySource(
            {u.user_id: self._profile(rng, u) for u in self.users if u.has_profile}
        )
        self.segments: MemorySource[Affinities] = MemorySource(self._segment_preferences())

    def _user(
        self, rng: random.Random, n: int, segments: int, favourite: float, new: float
    ) -> User:
        favourite_category = rng.choice(self.categories)
        rest = [rng.random() for _ in self.categories]
        total = sum(rest)
        preferences = {
            c: (1 - favourite) * r / total + (favourite if c == favourite_category else 0.0)
            for c, r in zip(self.categories, rest, strict=True)
        }
        return User(f"user{n}", f"seg{n % segments}", preferences, rng.random() >= new)

    def _profile(self, rng: random.Random, user: User) -> Affinities:
        # What a long-term model learnt: the preferences, blurred.
        noisy = {c: max(w + rng.gauss(0, 0.05), 0.0) for c, w in user.preferences.items()}
        return Affinities(noisy, updated_at=self.now - 86_400)

    def _segment_preferences(self) -> dict[str, Affinities]:
        sums: dict[str, dict[str, float]] = {}
        for user in self.users:
            bucket = sums.setdefault(user.segment, dict.fromkeys(self.categories, 0.0))
            for category, weight in user.preferences.items():
                bucket[category] += weight
        return {segment: Affinities(weights) for segment, weights in sums.items()}

    def sources(self) -> dict[str, MemorySource[SessionState] | MemorySource[Affinities]]:
        """The three reference sources, in memory: session, profile and segment stores."""
        return {
            "session_store": self.sessions,
            "profile_store": self.profiles,
            "segment_store": self.segments,
        }

    def query(self, rng: random.Random, size: int = 50) -> tuple[Candidate, ...]:
        """A query's candidates: a sample of the catalog, best first by base score."""
        picked = rng.sample(self.items, min(size, len(self.items)))
        scored = [
            Candidate(
                item.item_id, item.quality + rng.gauss(0, 0.1), item.category, item.published_at
            )
            for item in picked
        ]
        return tuple(sorted(scored, key=lambda c: -c.score))

    @staticmethod
    def position_bias(position: int) -> float:
        """How likely a user looks at ``position`` (0-based): ``1 / log2(position + 2)``."""
        return 1.0 / math.log2(position + 2)

    def clicks(
        self,
        rng: random.Random,
        user: User,
        shown: list[Candidate] | tuple[Candidate, ...],
        depth: int = 10,
        scale: float = 1.5,
    ) -> list[int]:
        """The positions clicked in the top ``depth`` of ``shown``."""
        clicked = []
        for position, candidate in enumerate(shown[:depth]):
            preference = user.preferences.get(candidate.category or "", 0.0)
            if rng.random() < min(1.0, self.position_bias(position) * preference * scale):
                clicked.append(position)
        return clicked

    def click(self, session_id: str, candidate: Candidate, at: float) -> None:
        """Record a click in ``session_id``'s state, as the stream processor would."""
        state = self.sessions(session_id) or SessionState()
        self.sessions.set(
            session_id,
            SessionState((*state.clicks, Click(candidate.item_id, candidate.category, at)), at),
        )
