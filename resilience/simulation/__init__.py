"""``resilience simulate``: a synthetic world run through the real engine on a virtual clock.

The world (:mod:`resilience.population` grown into traffic: a catalog, users with hidden
preferences, profiles, segments, sessions, new users and a query stream) sends searches through
the real engine, plugins and guards, while a scenario injects faults into its stores and stream
and operations into its controls. Clicks are drawn from the lists actually served, so the lift of
personalization over the holdout is measured the way ``resilience lift`` measures it, beside the
true lift, known by construction. See ``docs/simulation.md``.

::

    from resilience.simulation import simulate

    result = simulate("default", seed=1)
    print(result["failed"], result["latency_ms"]["p999"], result["lift"])
"""

from __future__ import annotations

from ._run import WATERMARK_SOURCE, SimulationError, simulate
from ._scenario import (
    STORES,
    BadReload,
    Flapping,
    Hang,
    KillSwitch,
    Latency,
    NewUsers,
    Outage,
    Phase,
    Scenario,
    ScenarioError,
    StreamLag,
    WorldOptions,
    builtin_scenarios,
    load_scenario,
)
from ._summary import format_summary

__all__ = [
    "STORES",
    "WATERMARK_SOURCE",
    "BadReload",
    "Flapping",
    "Hang",
    "KillSwitch",
    "Latency",
    "NewUsers",
    "Outage",
    "Phase",
    "Scenario",
    "ScenarioError",
    "SimulationError",
    "StreamLag",
    "WorldOptions",
    "builtin_scenarios",
    "format_summary",
    "load_scenario",
    "simulate",
]
