"""The plugin contract check of the test kit: what passes it, and each way to fail it."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import Field

from resilience import (
    PluginHost,
    RequestContext,
    Signals,
    SourceName,
    Tier,
    TierParams,
    hookimpl,
)
from resilience.testing import assert_plugin, plugin_problems
from resilience.testing.contract import step_type_problems

from .plugin_fixtures.counted import CountedTier


class QuietParams(TierParams):
    source: SourceName = Field(default="quiet_store", description="Where it reads.")


class QuietTier(Tier):
    """Keeps the contract: nothing to read is a miss."""

    name = "quiet"
    Params = QuietParams

    def __init__(self, params: Any, context: Any) -> None:
        super().__init__(params, context)
        self._source = context.source(params.source)

    def run(self, request: RequestContext, timeout: float) -> Signals | None:
        found = self._source.call(request.user_id or "", timeout) if request.user_id else None
        return None if found is None else Signals({"books": 1.0}, {}, self.step_id)


def plugin_of(*step_types: type[Any]) -> object:
    """A plugin object contributing ``step_types``, as an entry point would load one."""

    class Plugin:
        @hookimpl
        def resilience_step_types(self) -> Sequence[type[Any]]:
            return list(step_types)

    return Plugin()


def tier(name: str, run: Any, params: type[TierParams] = QuietParams, **attributes: Any) -> type:
    return type(
        f"{name.title()}Tier",
        (QuietTier,),
        {"name": name, "Params": params, "run": run, "__module__": __name__, **attributes},
    )


def test_a_plugin_that_keeps_the_contract_passes() -> None:
    assert plugin_problems(plugin_of(QuietTier)) == []
    assert_plugin(plugin_of(QuietTier))


def test_the_example_plugin_package_keeps_the_contract() -> None:
    from resilience_trending import plugin

    assert_plugin(plugin)


@pytest.mark.parametrize("name", PluginHost(entry_points_=[]).names())
def test_every_builtin_step_type_keeps_the_contract(name: str) -> None:
    host = PluginHost(entry_points_=[])
    declared = {"stream_lag": {"source": "watermark"}}.get(name, {})
    before = [{"type": "session"}] if name == "stale_cache" else []
    assert step_type_problems(host.step_types[name], declared, host, before) == []


def test_a_tier_that_errs_on_missing_data_fails_it_for_both_apis() -> None:
    def run(self: Any, request: RequestContext, timeout: float) -> Signals | None:
        return Signals({request.user_id.upper(): 1.0}, {}, self.step_id)  # type: ignore[union-attr]

    problems = plugin_problems(plugin_of(tier("shouty", run)))
    assert len(problems) == 2, problems
    assert problems[0].startswith("shouty: decide: missing data is an error, not a miss")
    assert "shouty=error" in problems[0]
    assert problems[1].startswith("shouty: adecide:")
    with pytest.raises(AssertionError, match="breaks the contract"):
        assert_plugin(plugin_of(tier("shouty", run)))


def test_a_tier_that_answers_garbage_on_missing_data_fails_it() -> None:
    def run(self: Any, request: RequestContext, timeout: float) -> Any:
        return {}

    problems = plugin_problems(plugin_of(tier("empty_dict", run)))
    assert any("empty_dict=garbage" in p for p in problems), problems


def test_an_undescribed_parameter_fails_it() -> None:
    class Bare(QuietParams):
        depth: int = 3

    problems = plugin_problems(plugin_of(tier("bare", QuietTier.run, Bare)))
    assert problems == [
        "bare: parameter 'depth' has no description (it is the docs' 'meaning' and the "
        "editor's hover: Field(description=...))"
    ]


def test_telemetry_that_is_not_registered_or_not_declared_fails_it() -> None:
    unregistered = tier("loud", QuietTier.run, telemetry=("contract.never_registered",))
    assert plugin_problems(plugin_of(unregistered)) == [
        "loud: telemetry names 'contract.never_registered', which no register_event or "
        "register_metric declared"
    ]
    # its module registers contract_test_lookups: the step must list it
    problems = plugin_problems(plugin_of(CountedTier))
    assert problems == [
        "counted: its module registers 'contract_test_lookups_total', which no step type of "
        "that module lists in its telemetry (the docs' telemetry table is made of that list)"
    ]
    declared = type("Declared", (CountedTier,), {"telemetry": ("contract_test_lookups_total",)})
    assert plugin_problems(plugin_of(declared)) == []


def test_a_required_parameter_needs_params_and_passes_with_them() -> None:
    class Needs(TierParams):
        source: SourceName = Field(description="Where it reads; no default.")

    needy = tier("needy", QuietTier.run, Needs)
    problems = plugin_problems(plugin_of(needy))
    assert len(problems) == 1 and "pass params= for a required one" in problems[0], problems
    assert plugin_problems(plugin_of(needy), params={"needy": {"source": "s"}}) == []


def test_a_plugin_that_does_not_load_or_contributes_nothing_fails_it() -> None:
    class Wrong(Tier):
        name = "wrong"
        Params = dict  # type: ignore[assignment]

    assert plugin_problems(plugin_of(Wrong))[0].startswith("the plugin does not load:")
    assert plugin_problems(SimpleNamespace()) == [
        "the plugin contributes no step type (resilience_step_types returned none)"
    ]


def test_two_step_types_of_one_module_share_its_telemetry_and_imports_do_not_count() -> None:
    # This module imports a registered name from the engine (EVENTS), and the fixture module
    # registers one metric that only one of its two step types lists: both are fine.
    from .plugin_fixtures import counted

    listing = type(
        "Listing", (counted.CountedTier,), {"telemetry": ("contract_test_lookups_total",)}
    )
    quiet = type("Quiet2", (counted.CountedTier,), {"name": "counted_quiet"})
    assert listing.__module__ == quiet.__module__ == "tests.test_contract"
    listing.__module__ = quiet.__module__ = counted.__name__
    assert plugin_problems(plugin_of(listing, quiet)) == []


def test_it_runs_inside_a_running_event_loop() -> None:
    import asyncio

    async def in_a_test_loop() -> list[str]:
        return plugin_problems(plugin_of(QuietTier))

    assert asyncio.run(in_a_test_loop()) == []
