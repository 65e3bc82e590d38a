"""Plugin discovery, the hook contract, and guards and post steps contributed by a plugin."""

from __future__ import annotations

import inspect
import sys
import textwrap
from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import pluggy
import pytest

from resilience import (
    Candidate,
    Engine,
    Outcome,
    PluginError,
    PluginHost,
    PolicyValidationError,
    Reason,
    RequestContext,
    hookspecs,
    load_policies,
)
from resilience.testing import FakeClock

from .conftest import Stores
from .plugin_fixtures import steps as fixture_steps


def entry_point(name: str, module: str) -> EntryPoint:
    return EntryPoint(name=name, value=module, group="resilience.plugins")


BUILTINS = [
    "boost_cap",
    "error_rate",
    "exploration",
    "profile_only",
    "segment",
    "session",
    "stale_cache",
    "stream_lag",
    "unpersonalized",
]


def test_builtins_register_through_the_hook() -> None:
    host = PluginHost(entry_points_=[])
    assert host.names() == BUILTINS
    assert {host.origin(n) for n in BUILTINS} == {"builtin"}
    builtin = host.manager.get_plugin("builtin")
    assert host.manager.hook.resilience_step_types.get_hookimpls()[0].plugin is builtin


def test_every_hookspec_is_documented() -> None:
    specs = [
        obj
        for name, obj in vars(hookspecs).items()
        if name.startswith("resilience_") and callable(obj)
    ]
    assert specs, "no hookspecs found"
    for spec in specs:
        doc = inspect.getdoc(spec) or ""
        assert "Called" in doc, f"{spec.__name__}: say when it is called"
        assert ":return:" in doc, f"{spec.__name__}: say what it returns"
        for param in inspect.signature(spec).parameters:
            assert f":param {param}:" in doc, f"{spec.__name__}: document {param}"


def test_unknown_hook_implementations_are_rejected() -> None:
    class Typo:
        @hookspecs.hookimpl
        def resilience_step_typez(self) -> list[object]:
            return []

    with pytest.raises(pluggy.PluginValidationError):
        PluginHost(extra=[Typo()], entry_points_=[])


def test_entry_point_plugins_load_and_contribute_steps() -> None:
    host = PluginHost(
        allow=["acme"], entry_points_=[entry_point("acme", "tests.plugin_fixtures.steps")]
    )
    assert {"off_for", "by_category", "fixed"} <= set(host.names())
    assert host.origin("off_for") == "acme"


def test_the_allowlist_keeps_other_plugins_out() -> None:
    eps = [
        entry_point("acme", "tests.plugin_fixtures.steps"),
        entry_point("broken", "tests.plugin_fixtures.broken"),
    ]
    host = PluginHost(allow=["acme"], entry_points_=eps)
    assert "off_for" in host.names()
    builtins_only = PluginHost(allow=[], entry_points_=eps)
    assert builtins_only.names() == BUILTINS


def test_a_plugin_that_fails_to_import_is_named() -> None:
    with pytest.raises(PluginError) as caught:
        PluginHost(
            allow=["broken"], entry_points_=[entry_point("broken", "tests.plugin_fixtures.broken")]
        )
    message = str(caught.value)
    assert caught.value.plugin == "broken"
    assert "acme-sdk" in message
    assert "settings.plugins.allow" in message


def test_a_clashing_step_name_names_both_plugins() -> None:
    with pytest.raises(PluginError) as caught:
        PluginHost(
            allow=["clasher"], entry_points_=[entry_point("clasher", "tests.plugin_fixtures.clash")]
        )
    message = str(caught.value)
    assert "'clasher'" in message
    assert "'session'" in message
    assert "'builtin'" in message


def test_a_hook_returning_garbage_is_named() -> None:
    with pytest.raises(PluginError, match="bad"):
        PluginHost(
            allow=["bad"], entry_points_=[entry_point("bad", "tests.plugin_fixtures.bad_return")]
        )


@pytest.fixture
def installed_distribution(tmp_path: Path) -> Iterator[None]:
    """A real distribution on sys.path with an entry point in ``resilience.plugins``."""
    (tmp_path / "acme_steps_plugin.py").write_text(
        "from tests.plugin_fixtures.steps import resilience_step_types  # noqa: F401\n"
    )
    info = tmp_path / "acme_steps-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-steps\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """
            [resilience.plugins]
            acme = acme_steps_plugin
            """
        )
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("acme_steps_plugin", None)


@pytest.mark.usefixtures("installed_distribution")
def test_an_installed_distribution_is_discovered_and_filtered_by_the_allowlist() -> None:
    host = PluginHost(allow=["acme"])
    assert host.origin("off_for") == "acme"
    text = """
version: 1
settings: {plugins: {allow: []}}
policies:
  p:
    chain: [fixed, unpersonalized]
"""
    from resilience import PolicyValidationError

    with pytest.raises(PolicyValidationError, match="unknown tier type 'fixed'"):
        load_policies(text)
    allowed = load_policies(text.replace("allow: []", "allow: [acme]"))
    assert allowed.policies["p"].chain[0].type.name == "fixed"


# --- guards and post steps contributed by a plugin -------------------------------------------


@pytest.fixture
def plugin_host() -> PluginHost:
    return PluginHost(extra=[fixture_steps], entry_points_=[])


def policy(guards: str = "[]", post: str = "[]") -> str:
    return f"""
version: 1
default_policy: p
policies:
  p:
    guards: {guards}
    chain: [profile_only, unpersonalized]
    post: {post}
"""


CANDIDATES = (
    Candidate("a", 3.0, "shoes"),
    Candidate("b", 2.0, "books"),
    Candidate("c", 1.0, "toys"),
)


def test_a_tripped_guard_serves_the_terminal_tier(
    make_engine: Callable[..., Engine], stores: Stores, plugin_host: PluginHost
) -> None:
    engine = make_engine(
        policy(guards="[{type: off_for, users: [u1]}]"), stores.sync(), plugins=plugin_host
    )
    decision = engine.decide(RequestContext(user_id="u1"))
    assert decision.trace.reason is Reason.GUARD
    assert decision.trace.served == "unpersonalized"
    assert decision.trace.outcome_of("off_for") is Outcome.DISABLED
    assert decision.trace.outcome_of("profile_only") is None
    assert "listed_user" in str(decision.trace)
    assert stores.profile.calls == 0
    other = engine.decide(RequestContext(user_id="u2"))
    assert other.trace.outcome_of("off_for") is Outcome.OK


def test_a_failing_guard_is_recorded_and_the_chain_runs(
    make_engine: Callable[..., Engine], stores: Stores, plugin_host: PluginHost
) -> None:
    engine = make_engine(
        policy(guards="[{type: off_for, explode: true}]"), stores.sync(), plugins=plugin_host
    )
    decision = engine.decide(RequestContext(user_id="u1"))
    assert decision.trace.outcome_of("off_for") is Outcome.ERROR
    assert decision.trace.served == "profile_only"


def test_post_steps_rerank_in_order(
    make_engine: Callable[..., Engine], stores: Stores, plugin_host: PluginHost
) -> None:
    engine = make_engine(policy(post="[by_category]"), stores.sync(), plugins=plugin_host)
    decision = engine.decide(RequestContext(user_id="u1", candidates=CANDIDATES))
    assert [c.item_id for c in decision.candidates] == ["b", "a", "c"]  # books 0.75, shoes 0.25
    assert decision.trace.outcome_of("by_category") is Outcome.OK


@pytest.mark.parametrize(
    ("mode", "outcome"),
    [("raise", Outcome.ERROR), ("garbage", Outcome.GARBAGE), ("garbage_items", Outcome.GARBAGE)],
)
def test_a_failing_post_step_leaves_the_previous_list(
    make_engine: Callable[..., Engine],
    stores: Stores,
    plugin_host: PluginHost,
    mode: str,
    outcome: Outcome,
) -> None:
    post = f"[{{type: by_category, id: broken, fault: {mode}}}, by_category]"
    engine = make_engine(policy(post=post), stores.sync(), plugins=plugin_host)
    decision = engine.decide(RequestContext(user_id="u1", candidates=CANDIDATES))
    assert decision.trace.outcome_of("broken") is outcome
    assert decision.trace.outcome_of("by_category") is Outcome.OK
    assert [c.item_id for c in decision.candidates] == ["b", "a", "c"]


def test_post_steps_are_skipped_when_the_budget_is_spent(
    make_engine: Callable[..., Engine],
    stores: Stores,
    plugin_host: PluginHost,
    fake_clock: FakeClock,
) -> None:
    stores.profile.slow(0.040)
    engine = make_engine(policy(post="[by_category]"), stores.sync(), plugins=plugin_host)
    decision = engine.decide(RequestContext(user_id="u1", candidates=CANDIDATES))
    assert decision.trace.outcome_of("by_category") is Outcome.SKIPPED_BUDGET
    assert decision.candidates == CANDIDATES


def test_a_guard_or_post_type_in_the_wrong_section_is_an_error(plugin_host: PluginHost) -> None:
    from resilience import PolicyValidationError

    with pytest.raises(PolicyValidationError) as caught:
        load_policies(policy(guards="[by_category]"), plugins=plugin_host)
    (issue,) = caught.value.issues
    assert "'by_category' is a post step, not a guard" in issue.message
    assert issue.hint == "move it under 'post'"


@pytest.fixture
def broken_distribution(tmp_path: Path) -> Iterator[Path]:
    """An installed distribution whose plugin module fails if it is ever imported."""
    marker = tmp_path / "imported"
    (tmp_path / "acme_broken_plugin.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nraise ImportError('acme broke')\n"
    )
    info = tmp_path / "acme_broken-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[resilience.plugins]\nbroken = acme_broken_plugin\n")
    sys.path.insert(0, str(tmp_path))
    try:
        yield marker
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("acme_broken_plugin", None)


@pytest.mark.parametrize(
    "settings",
    [
        "{plugins: {allow: []}, events: {decision_sample_rate: 2}}",
        "{plugins: {allow: [], typo: 1}}",
        "{plugins: {allow: 3}}",
        "[1]",
    ],
)
def test_invalid_settings_never_widen_what_loads(broken_distribution: Path, settings: str) -> None:
    from resilience import PolicyValidationError

    text = f"version: 1\nsettings: {settings}\npolicies:\n  p:\n    chain: [unpersonalized]\n"
    with pytest.raises(PolicyValidationError):
        load_policies(text)
    assert not broken_distribution.exists()


def test_an_installed_plugin_loads_only_when_the_allowlist_names_it(
    broken_distribution: Path,
) -> None:

    text = "policies:\n  p:\n    chain: [unpersonalized]\n"
    load_policies(f"version: 1\n{text}")  # no allowlist: built-ins only, nothing imported
    assert not broken_distribution.exists()
    with pytest.raises(PluginError, match="acme broke"):
        load_policies(f"version: 1\nsettings: {{plugins: {{allow: [broken]}}}}\n{text}")
    assert broken_distribution.exists()


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Path]:
    """A module on sys.path that leaves a marker file if anything ever imports it."""
    marker = tmp_path / "imported"
    (tmp_path / "canary_steps.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from tests.plugin_fixtures.steps import *  # noqa: F403\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield marker
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("canary_steps", None)


@pytest.mark.parametrize(
    "step",
    [
        "canary_steps",
        "canary_steps.FixedTier",
        "'canary_steps:FixedTier'",
        "'tests.plugin_fixtures.steps:FixedTier'",
        "os.system",
        "'!!python/name:canary_steps.FixedTier'",
    ],
)
def test_a_policy_never_imports_a_module_by_dotted_path(canary: Path, step: str) -> None:
    from resilience import PolicyValidationError

    text = (
        "version: 1\n"
        "settings: {plugins: {allow: [canary_steps, 'canary_steps:FixedTier']}}\n"
        "policies:\n"
        "  p:\n"
        f"    chain: [{{type: {step}}}, unpersonalized]\n"
    )
    with pytest.raises(PolicyValidationError) as caught:
        load_policies(text)
    assert "unknown tier type" in str(caught.value)
    assert not canary.exists(), "a name in a policy file imported a module"


_EXAMPLE_PLUGIN_CHECK = """
import sys
from importlib.metadata import entry_points
from resilience import PolicyValidationError, load_policies
from resilience.testing import RecordingSink

(ep,) = [e for e in entry_points(group="resilience.plugins") if e.name == "trending"]
assert ep.dist is not None and ep.dist.name == "resilience-trending", ep.dist
POLICY = (
    "version: 1\\n"
    "settings: {plugins: {allow: ALLOW}}\\n"
    "policies:\\n"
    "  p:\\n"
    "    chain: [{type: trending_region, timeout: 2ms}, unpersonalized]\\n"
)
for allow in ("[]", "[other]"):
    try:
        load_policies(POLICY.replace("ALLOW", allow))
    except PolicyValidationError as exc:
        assert "unknown tier type 'trending_region'" in str(exc), exc
    else:
        raise AssertionError(f"loaded with allow: {allow}")
assert "resilience_trending" not in sys.modules, "imported without being allowed"
events = RecordingSink()
loaded = load_policies(POLICY.replace("ALLOW", "[trending]"), events=events)
assert loaded.plugins.origin("trending_region") == "trending"
(event,) = events.of("resilience.plugin.loaded")
assert event["distribution"] == "resilience-trending", event
assert event["step_types"] == ["trending_region"], event
print("ok")
"""


def test_the_example_plugin_distribution_loads_through_its_entry_point_only_when_allowed() -> None:
    """The example package (examples/trending_plugin), really installed by ``make setup``: its
    entry point is found, and its module is imported only for a policy file that allows it.
    In a fresh interpreter, so that no earlier test has imported it."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", _EXAMPLE_PLUGIN_CHECK],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


class _TierWithLooseParams:
    from pydantic import BaseModel

    class Params(BaseModel):
        timeout: float = 0.01


def test_a_tier_whose_params_do_not_forbid_unknown_keys_is_refused() -> None:
    from resilience import Signals, Tier

    class Loose(Tier):
        name = "loose"
        Params = _TierWithLooseParams.Params  # type: ignore[assignment]

        def run(self, request: RequestContext, timeout: float) -> Signals | None:
            return None

    class Plugin:
        @hookspecs.hookimpl
        def resilience_step_types(self) -> list[type[Tier]]:
            return [Loose]

    with pytest.raises(PluginError, match=r"must subclass resilience\.TierParams"):
        PluginHost(extra=[Plugin()], entry_points_=[])


class _NeedsAPI:
    def __init__(self, api: object) -> None:
        self.RESILIENCE_API = api

    @hookspecs.hookimpl
    def resilience_step_types(self) -> list[type]:
        return []


@pytest.mark.parametrize(
    ("api", "message"),
    [
        (hookspecs.API_VERSION + 1, f"needs plugin API {hookspecs.API_VERSION + 1}"),
        ("2", "must be a whole number"),
        (True, "must be a whole number"),
        (0, "must be a whole number"),
    ],
)
def test_a_plugin_that_needs_a_newer_api_is_refused_by_name(api: object, message: str) -> None:
    with pytest.raises(PluginError, match=message) as caught:
        PluginHost(extra=[_NeedsAPI(api)], entry_points_=[])
    assert "_NeedsAPI" in str(caught.value)


def test_a_plugin_written_for_this_api_loads() -> None:
    host = PluginHost(extra=[_NeedsAPI(hookspecs.API_VERSION)], entry_points_=[])
    assert "unpersonalized" in host.names()


def test_the_example_plugin_appears_in_explain_when_a_policy_uses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from resilience.cli import main

    path = tmp_path / "policies.yaml"
    path.write_text(
        "version: 1\n"
        "settings: {plugins: {allow: [trending]}}\n"
        "policies:\n"
        "  anonymous:\n"
        "    chain: [{type: trending_region, timeout: 3ms}, unpersonalized]\n"
    )
    assert main(["explain", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1. trending_region (type trending_region, plugin trending)" in out
    assert "attribute: region" in out


def test_an_unknown_type_names_the_installed_plugins_the_allowlist_leaves_out() -> None:
    # The entry point's module does not exist: the hint must come without importing it.
    host = PluginHost(
        allow=[], entry_points_=[entry_point("acme", "tests.plugin_fixtures.no_such_module")]
    )
    assert host.not_allowed == ("acme",)
    text = "version: 1\npolicies:\n  p:\n    chain: [trending_region, unpersonalized]\n"
    with pytest.raises(PolicyValidationError) as refused:
        load_policies(text, plugins=host)
    assert refused.value.issues[0].hint.endswith(
        "; installed but not in settings.plugins.allow: acme (add the plugin that provides it)"
    )
    close = text.replace("trending_region", "sesion")  # a typo of a known type: no such hint
    with pytest.raises(PolicyValidationError) as typo:
        load_policies(close, plugins=host)
    assert typo.value.issues[0].hint == "did you mean 'session'?"
