"""The example's in-memory world: a catalog to search, user profiles and segment preferences.

Everything is generated from a fixed seed, so the app, its tests and the load script agree on
which users, sessions and items exist. Only the sessions live in Redis (seeded by the load
script and the tests, with :func:`session_value`); profiles and segments are in memory
(:class:`resilience.MemorySource`), as a service's caches of slower stores would be.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from resilience import Affinities, Candidate, MemorySource

CATEGORIES = ("shoes", "books", "toys", "electronics", "garden", "kitchen", "sports", "music")
COLOURS = ("red", "blue", "green", "black", "white", "yellow")
SEGMENTS = ("young", "family", "pro")
ITEMS = 4_000
USERS = 1_000
SESSIONS = 1_000
MAX_RESULTS = 50
SEED = 7


@dataclass(frozen=True, slots=True)
class Item:
    """One catalog entry."""

    item_id: str
    title: str
    category: str
    relevance: float
    published_at: float


class Catalog:
    """A small search index: a query matches items by the words of their titles.

    Args:
        items: how many items to generate.
        now: the wall time items are published before (fixed, for reproducible lists).
    """

    def __init__(self, items: int = ITEMS, now: float = 1.7e9) -> None:
        rng = random.Random(SEED)
        self.items: list[Item] = []
        self._by_word: dict[str, list[Item]] = {}
        for n in range(items):
            category = CATEGORIES[n % len(CATEGORIES)]
            colour = rng.choice(COLOURS)
            item = Item(
                f"i{n}",
                f"{colour} {category} {n}",
                category,
                round(rng.uniform(1.0, 100.0), 3),
                now - rng.uniform(0, 90 * 86_400),
            )
            self.items.append(item)
            for word in (colour, category):
                self._by_word.setdefault(word, []).append(item)
        for matches in self._by_word.values():
            matches.sort(key=lambda i: -i.relevance)
        self._top = sorted(self.items, key=lambda i: -i.relevance)[:MAX_RESULTS]

    def search(self, query: str, limit: int = MAX_RESULTS) -> tuple[Candidate, ...]:
        """The best ``limit`` matches of ``query``, best first (an empty query: the best items).

        A word matches the items whose title holds it; several words match any of them.
        """
        words = query.lower().split()
        if not words:
            found = self._top
        else:
            seen: dict[str, Item] = {}
            for word in words:
                for item in self._by_word.get(word, ())[:limit]:
                    seen.setdefault(item.item_id, item)
            found = sorted(seen.values(), key=lambda i: -i.relevance)
        return tuple(
            Candidate(i.item_id, i.relevance, i.category, i.published_at) for i in found[:limit]
        )


def profiles() -> MemorySource[Affinities]:
    """Long-term affinities of users ``u-0`` .. ``u-999``: two favourite categories each."""
    rng = random.Random(SEED + 1)
    return MemorySource(
        {
            f"u-{n}": Affinities({rng.choice(CATEGORIES): 3.0, rng.choice(CATEGORIES): 1.0})
            for n in range(USERS)
        }
    )


def segments() -> MemorySource[Affinities]:
    """Preferences of the three segments."""
    return MemorySource(
        {
            "young": Affinities({"electronics": 2.0, "music": 2.0, "sports": 1.0}),
            "family": Affinities({"toys": 2.0, "kitchen": 2.0, "garden": 1.0}),
            "pro": Affinities({"electronics": 2.0, "books": 1.0}),
        }
    )


def session_value(session: int, now: float) -> bytes:
    """The Redis value of session ``s-<session>`` as the stream processor would write it: three
    recent clicks in one category (the session's current interest), in the store's default
    JSON layout (``docs/sources.md``)."""
    category = CATEGORIES[session % len(CATEGORIES)]
    clicks = [
        {
            "item": f"i{(session * 3 + k) * len(CATEGORIES) + session % len(CATEGORIES)}",
            "category": category,
            "ts": now - 60 + 10 * k,
        }
        for k in range(3)
    ]
    return json.dumps({"clicks": clicks, "event_time": now - 40}).encode()
