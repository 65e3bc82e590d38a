"""The synthetic population: seeded, and clicks that follow preferences and position."""

from __future__ import annotations

import random

from resilience import Engine, NullSink, RequestContext, load_policies
from resilience.population import Population

from .conftest import REFERENCE_POLICIES


def test_the_same_seed_gives_the_same_world() -> None:
    first, second = Population(5), Population(5)
    assert first.items == second.items
    assert first.users == second.users
    assert Population(6).items != first.items


def test_preferences_concentrate_on_a_favourite_category() -> None:
    world = Population(1, favourite_share=0.7)
    for user in world.users:
        assert abs(sum(user.preferences.values()) - 1.0) < 1e-9
        assert max(user.preferences.values()) >= 0.7
    new_users = [u for u in world.users if not u.has_profile]
    assert new_users
    assert all(world.profiles(u.user_id) is None for u in new_users)


def test_clicks_follow_preference_and_position() -> None:
    world = Population(2, favourite_share=0.9)
    user = world.users[0]
    favourite = max(user.preferences, key=user.preferences.__getitem__)
    rng = random.Random(3)
    liked = [c for c in world.query(rng, 400) if c.category == favourite][:10]
    other = [c for c in world.query(rng, 400) if c.category != favourite][:10]
    clicks_liked = sum(len(world.clicks(rng, user, liked)) for _ in range(300))
    clicks_other = sum(len(world.clicks(rng, user, other)) for _ in range(300))
    assert clicks_liked > 3 * clicks_other
    top = sum(1 for _ in range(2000) if 0 in world.clicks(rng, user, liked[:1] * 10))
    low = sum(1 for _ in range(2000) if 9 in world.clicks(rng, user, liked[:1] * 10))
    assert top > low  # position bias


def test_the_world_feeds_an_engine_and_learns_from_clicks() -> None:
    world = Population(4)
    engine = Engine(
        load_policies(REFERENCE_POLICIES.read_text()), world.sources(), events=NullSink()
    )
    user = next(u for u in world.users if u.has_profile)
    rng = random.Random(0)
    request = RequestContext(
        user_id=user.user_id,
        session_id="s",
        segment=user.segment,
        request_id="r",
        candidates=world.query(rng),
    )
    assert engine.decide(request).trace.served == "profile_only"  # a new session
    world.click("s", request.candidates[0], world.now)
    assert engine.decide(request).trace.served == "session"  # its first click counts
    engine.close()
