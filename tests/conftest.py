"""Shared test set-up. The engine fixtures (fake_clock, make_engine, faulty_source,
recording_sink) come from the package's own pytest plugin, as they would for any user."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from hypothesis import HealthCheck, settings

from resilience import Affinities, Click, SessionState
from resilience.testing import FakeClock, FaultySource, RedisServer

settings.register_profile(
    "ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None)


def in_ci() -> bool:
    """Whether this is a CI run (``CI=true``), where a missing service is a failure."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


settings.load_profile("ci" if in_ci() else "dev")

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_POLICIES = ROOT / "policies.yaml"


@pytest.fixture
def reference_yaml() -> str:
    """The text of the reference ``policies.yaml``."""
    return REFERENCE_POLICIES.read_text()


class Stores:
    """The three reference sources as fault-injecting test doubles on the fake clock."""

    def __init__(self, session: Any, profile: Any, segment: Any) -> None:
        self.session = session
        self.profile = profile
        self.segment = segment

    def sync(self) -> dict[str, Any]:
        """Sources for ``Engine.decide``."""
        return {
            "session_store": self.session,
            "profile_store": self.profile,
            "segment_store": self.segment,
        }

    def asyncio(self) -> dict[str, Any]:
        """The same sources as coroutine functions, for ``Engine.adecide``."""
        return {
            "session_store": self.session.async_,
            "profile_store": self.profile.async_,
            "segment_store": self.segment.async_,
        }


@pytest.fixture
def stores(fake_clock: FakeClock, faulty_source: Callable[..., FaultySource]) -> Stores:
    """A returning user ``u1`` with session ``s1`` (two shoe clicks), a new session ``s-new``,
    a profile for ``u1`` and segment ``young``."""
    now = fake_clock.wall()
    return Stores(
        faulty_source(
            {
                "s1": SessionState(
                    (Click("i1", "shoes", now - 30), Click("i2", "shoes", now - 10)), now - 10
                ),
                "s-new": SessionState((), now),
            }
        ),
        faulty_source({"u1": Affinities({"books": 3.0, "shoes": 1.0})}),
        faulty_source({"young": Affinities({"electronics": 2.0, "toys": 2.0})}),
    )


def missing_redis_server() -> NoReturn:
    """Fail in CI, where redis-server must be installed; skip elsewhere."""
    if in_ci():
        pytest.fail("redis-server is missing; CI must have it (apt-get install redis-server)")
    pytest.skip("redis-server is not installed")


def need_redis_server() -> None:
    """Go on only where ``redis-server`` is installed (see :func:`missing_redis_server`)."""
    if shutil.which("redis-server") is None:
        missing_redis_server()


def private_redis(**options: Any) -> RedisServer:
    """A started private redis-server (``RedisServer(**options)``), never the shared one."""
    try:
        return RedisServer(**options)
    except FileNotFoundError:
        missing_redis_server()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server on a free port, stopped after the test (never the shared one)."""
    with private_redis() as server:
        yield server
