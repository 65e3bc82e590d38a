"""The policy loader and validator: every error kind, with where it is and how to fix it.

Each error test pins the issue's line, column and dotted path, and checks that the message says
what is wrong and the hint (or the message) says how to fix it. Nothing here builds an engine
except the two checks that only an engine build can make (source binding, cache wiring).
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience import (
    Engine,
    NullSink,
    PolicyIssue,
    PolicySet,
    PolicyValidationError,
    SourceBindingError,
    load_policies,
    load_policies_file,
)
from resilience._yaml import MAX_DEPTH, MAX_NODES

# Line numbers of BASE, used by the tests below:
#  1 version: 1
#  2 policies:
#  3   search:
#  4     budget: 30ms
#  5     chain:
#  6       - type: session
#  7         timeout: 10ms
#  8       - type: stale_cache
#  9         max_age: 5m
# 10       - type: unpersonalized
BASE = """\
version: 1
policies:
  search:
    budget: 30ms
    chain:
      - type: session
        timeout: 10ms
      - type: stale_cache
        max_age: 5m
      - type: unpersonalized
"""


def issues_of(text: str | bytes) -> tuple[PolicyIssue, ...]:
    """Every issue ``load_policies`` reports for ``text`` (the load must fail)."""
    with pytest.raises(PolicyValidationError) as info:
        load_policies(text)
    assert info.value.issues, "a failed load must report at least one issue"
    return info.value.issues


def only_issue(text: str | bytes) -> PolicyIssue:
    """The single issue reported for ``text``."""
    found = issues_of(text)
    assert len(found) == 1, [str(i) for i in found]
    return found[0]


def where(issue: PolicyIssue) -> tuple[int, int, str]:
    return issue.line, issue.column, issue.path


# --- YAML level -------------------------------------------------------------------------------


def test_yaml_syntax_error_points_at_the_offending_character() -> None:
    issue = only_issue("version: 1\npolicies:\n  a: b: c\n")
    assert where(issue) == (3, 7, "")
    assert "YAML syntax error" in issue.message
    assert "mapping values are not allowed" in issue.message
    assert "fix the YAML syntax" in issue.hint
    assert str(issue) == (
        "<string>:3:7: YAML syntax error: mapping values are not allowed here "
        "(fix the YAML syntax at this position)"
    )


def test_unclosed_flow_sequence_is_a_syntax_error() -> None:
    issue = only_issue("version: 1\npolicies:\n  search: [\n")
    assert (issue.line, issue.column) == (4, 1)
    assert "YAML syntax error" in issue.message


def test_tab_indentation_is_a_syntax_error() -> None:
    issue = only_issue("version: 1\npolicies:\n\tsearch: {}\n")
    assert (issue.line, issue.column) == (3, 1)
    assert "'\\t'" in issue.message


@pytest.mark.parametrize(
    "text", ["", "\n\n", "# only a comment\n", "# one\n\n   # two\n"], ids=repr
)
def test_empty_file_or_only_comments(text: str) -> None:
    issue = only_issue(text)
    assert where(issue) == (1, 1, "")
    assert issue.message == "the file is empty"
    assert "version: 1" in issue.hint
    assert "policies:" in issue.hint
    assert str(issue) == (
        "<string>:1:1: the file is empty (start it with 'version: 1' and a 'policies:' section)"
    )


def test_duplicate_key_inside_a_step() -> None:
    text = BASE.replace("timeout: 10ms\n", "timeout: 10ms\n        timeout: 5ms\n")
    issue = only_issue(text)
    assert where(issue) == (8, 9, "policies.search.chain[0].timeout")
    assert "duplicate key 'timeout'" in issue.message
    assert "first defined at line 7" in issue.message
    assert "keep one of them" in issue.hint
    assert str(issue) == (
        "<string>:8:9: policies.search.chain[0].timeout: duplicate key 'timeout' "
        "(first defined at line 7) (keep one of them; YAML would silently use the last)"
    )


def test_duplicate_policy_names() -> None:
    text = BASE + "  search:\n    chain: [unpersonalized]\n"
    issue = only_issue(text)
    assert where(issue) == (11, 3, "policies.search")
    assert "duplicate key 'search'" in issue.message
    assert "first defined at line 3" in issue.message
    assert "keep one of them" in issue.hint


def test_python_apply_tag_executes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "hacked"
    payload = f'!!python/object/apply:builtins.open ["{target}", "w"]'
    # The payload is live: an unsafe loader would create the file.
    control = tmp_path / "control"
    yaml.unsafe_load(payload.replace(str(target), str(control))).close()
    assert control.exists()

    text = f"version: 1\npolicies: {payload}\n"
    tag_issues = [i for i in issues_of(text) if "tag" in i.message]
    assert len(tag_issues) == 1
    issue = tag_issues[0]
    assert where(issue) == (2, 11, "policies")
    assert "python/object/apply:builtins.open" in issue.message
    assert "is not allowed" in issue.message
    assert "remove the tag" in issue.hint
    assert not target.exists()


def test_os_system_apply_tag_is_refused(capfd: pytest.CaptureFixture[str]) -> None:
    text = 'version: 1\npolicies: !!python/object/apply:os.system ["echo hacked"]\n'
    issues = issues_of(text)
    assert "hacked" not in capfd.readouterr().out
    tagged = [i for i in issues if "tag" in i.message]
    assert [where(i) for i in tagged] == [(2, 11, "policies")]
    assert "python/object/apply:os.system" in tagged[0].message


def test_python_name_tag_is_refused() -> None:
    text = "version: 1\nx: !!python/name:os.system\npolicies:\n  a:\n    chain: [unpersonalized]\n"
    issue = next(i for i in issues_of(text) if "tag" in i.message)
    assert where(issue) == (2, 4, "x")
    assert "'tag:yaml.org,2002:python/name:os.system' is not allowed" in issue.message
    assert "remove the tag" in issue.hint


def test_custom_tag_is_refused() -> None:
    issue = only_issue("version: 1\npolicies:\n  a: !foo\n    chain: [unpersonalized]\n")
    assert where(issue) == (3, 6, "policies.a")
    assert "tag '!foo' is not allowed" in issue.message
    assert "plain YAML values" in issue.hint


def test_non_utf8_bytes() -> None:
    issue = only_issue(b"version: 1\n\xff\xfe\n")
    assert where(issue) == (0, 0, "")  # the file as a whole
    assert "not UTF-8" in issue.message
    assert "byte 11" in issue.message
    assert "UTF-8" in issue.hint


def test_utf8_bytes_are_accepted() -> None:
    text = BASE.replace("budget: 30ms", "description: Café ☕\n    budget: 30ms")
    assert isinstance(load_policies(text.encode("utf-8")), PolicySet)


def test_file_that_is_a_list_not_a_mapping() -> None:
    issue = only_issue("- version: 1\n- policies: {}\n")
    assert where(issue) == (1, 1, "")
    assert "must be a mapping" in issue.message
    assert "version: 1" in issue.hint


def test_multiple_yaml_documents() -> None:
    issue = only_issue(BASE + "---\n" + BASE)
    assert where(issue) == (12, 1, "")
    assert "more than one YAML document" in issue.message
    assert "'---'" in issue.hint


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", ".NaN"])
def test_non_finite_number(value: str) -> None:
    text = BASE.replace("timeout: 10ms", f"timeout: 10ms\n        blend_k: {value}")
    issue = only_issue(text)
    assert where(issue) == (8, 18, "policies.search.chain[0].blend_k")
    assert f"{value!r} is not a finite number" in issue.message
    assert "finite value" in issue.hint


def test_alias_bomb_is_rejected_quickly_and_cheaply() -> None:
    # Nine levels of ten aliases each: 10**9 values once expanded.
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 10):
        ref = f"*a{level - 1}"
        lines.append(f"a{level}: &a{level} [{', '.join([ref] * 10)}]")
    text = "\n".join(lines) + "\n"
    tracemalloc.start()
    try:
        issue = only_issue(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024
    assert f"more than {MAX_NODES} values" in issue.message
    assert "alias" in issue.hint
    # The expansion runs out while copying the innermost list: it points at one of its values.
    assert issue.line == 1
    assert lines[0][issue.column - 1] == "x"
    assert issue.path == ""


def test_deep_nesting_reports_where_the_limit_is_crossed() -> None:
    depth = MAX_DEPTH + 5
    text = "".join(f"{'  ' * i}k{i}:\n" for i in range(depth)) + f"{'  ' * depth}v: 1\n"
    issue = only_issue(text)
    # The mapping at depth MAX_DEPTH + 1 starts on that line, indented two spaces a level.
    assert where(issue) == (MAX_DEPTH + 2, 2 * (MAX_DEPTH + 1) + 1, "")
    assert f"nesting deeper than {MAX_DEPTH} levels" in issue.message
    assert "flatten" in issue.hint


def test_very_deep_flow_nesting_does_not_crash() -> None:
    text = "version: 1\nx: " + "[" * 5000 + "]" * 5000 + "\n"
    issue = only_issue(text)
    assert f"nesting deeper than {MAX_DEPTH} levels" in issue.message
    assert "flatten" in issue.hint


# --- steps ------------------------------------------------------------------------------------


def test_unknown_step_type_suggests_the_closest() -> None:
    issue = only_issue(BASE.replace("type: stale_cache", "type: stale_cach"))
    assert where(issue) == (8, 9, "policies.search.chain[1].type")
    assert issue.message == "unknown tier type 'stale_cach'"
    assert issue.hint == "did you mean 'stale_cache'?"
    assert str(issue) == (
        "<string>:8:9: policies.search.chain[1].type: unknown tier type 'stale_cach' "
        "(did you mean 'stale_cache'?)"
    )


def test_unknown_step_type_without_close_match_lists_the_known_ones() -> None:
    issue = only_issue(BASE.replace("type: stale_cache", "type: zzz"))
    assert where(issue) == (8, 9, "policies.search.chain[1].type")
    assert "unknown tier type 'zzz'" in issue.message
    for name in ("profile_only", "segment", "session", "stale_cache", "unpersonalized"):
        assert name in issue.hint


def test_tier_step_used_under_post_says_to_move_it() -> None:
    issue = only_issue(BASE + "    post:\n      - type: unpersonalized\n")
    assert where(issue) == (12, 9, "policies.search.post[0].type")
    assert "'unpersonalized' is a tier step, not a post" in issue.message
    assert issue.hint == "move it under 'chain'"


def test_tier_step_used_under_guards_says_to_move_it() -> None:
    issue = only_issue(BASE + "    guards: [segment]\n")
    assert where(issue) == (11, 14, "policies.search.guards[0].type")
    assert "'segment' is a tier step, not a guard" in issue.message
    assert "move it under 'chain'" in issue.hint


def test_step_without_type() -> None:
    issue = only_issue(BASE.replace("      - type: stale_cache\n", "      - id: cached\n"))
    assert where(issue) == (8, 9, "policies.search.chain[1]")
    assert "step has no 'type'" in issue.message
    assert "stale_cache" in issue.hint


def test_unknown_parameter_suggests_the_closest() -> None:
    issue = only_issue(BASE.replace("timeout: 10ms", "timout: 10ms"))
    assert where(issue) == (7, 9, "policies.search.chain[0].timout")
    assert issue.message == "unknown parameter 'timout'"
    assert issue.hint == "did you mean 'timeout'?"


def test_unknown_parameter_on_a_tier_with_few_params() -> None:
    issue = only_issue(
        BASE.replace("- type: unpersonalized", "- type: unpersonalized\n        x: 1")
    )
    assert where(issue) == (11, 9, "policies.search.chain[2].x")
    assert "unknown parameter 'x'" in issue.message
    assert "timeout" in issue.hint


def test_wrong_type_string_for_number() -> None:
    issue = only_issue(BASE.replace("timeout: 10ms", 'timeout: 10ms\n        blend_k: "lots"'))
    assert where(issue) == (8, 9, "policies.search.chain[0].blend_k")
    assert "valid number" in issue.message
    assert issue.hint == "write a number"


def test_wrong_type_float_for_integer() -> None:
    issue = only_issue(BASE.replace("timeout: 10ms", "timeout: 10ms\n        max_clicks: 2.5"))
    assert where(issue) == (8, 9, "policies.search.chain[0].max_clicks")
    assert "valid integer" in issue.message
    assert issue.hint == "write a whole number"


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("max_clicks: 5.0", "max_clicks"),
        ("max_clicks: true", "max_clicks"),
        ("blend_k: '3'", "blend_k"),
        ("blend_k: yes", "blend_k"),
    ],
)
def test_values_are_not_coerced_across_types(line: str, key: str) -> None:
    issue = only_issue(BASE.replace("timeout: 10ms", f"timeout: 10ms\n        {line}"))
    assert issue.path == f"policies.search.chain[0].{key}"


def test_a_sample_rate_written_as_yes_is_refused() -> None:
    text = BASE.replace(
        "version: 1\n", "version: 1\nsettings:\n  events:\n    decision_sample_rate: yes\n"
    )
    issue = only_issue(text)
    assert issue.path == "settings.events.decision_sample_rate"


def test_bare_number_duration_asks_for_a_unit() -> None:
    issue = only_issue(BASE.replace("timeout: 10ms", "timeout: 10"))
    assert where(issue) == (7, 9, "policies.search.chain[0].timeout")
    assert "bare number is ambiguous" in issue.message
    fix = f"{issue.message} {issue.hint}"
    assert "'10ms'" in fix
    assert "'10s'" in fix


@pytest.mark.parametrize("value", ["10 parsecs", "ms", "10 ms ms", "-5ms", "1e3ms"])
def test_malformed_duration_string(value: str) -> None:
    issue = only_issue(BASE.replace("max_age: 5m", f"max_age: {value}"))
    assert where(issue) == (9, 9, "policies.search.chain[1].max_age")
    assert f"{value!r} is not a duration" in issue.message
    assert "us, ms, s, m, h" in issue.hint
    assert "'10ms'" in issue.hint


def test_out_of_range_session_weight() -> None:
    issue = only_issue(
        BASE.replace("timeout: 10ms", "timeout: 10ms\n        max_session_weight: 1.5")
    )
    assert where(issue) == (8, 9, "policies.search.chain[0].max_session_weight")
    assert "less than or equal to 1" in issue.message
    assert issue.hint == "use a value of at most 1.0"


def test_out_of_range_blend_k() -> None:
    issue = only_issue(BASE.replace("timeout: 10ms", "timeout: 10ms\n        blend_k: 0"))
    assert where(issue) == (8, 9, "policies.search.chain[0].blend_k")
    assert "greater than 0" in issue.message
    assert issue.hint == "use a value above 0.0"


def test_zero_budget() -> None:
    issue = only_issue(BASE.replace("budget: 30ms", "budget: 0ms"))
    assert where(issue) == (4, 5, "policies.search.budget")
    assert "greater than 0" in issue.message
    assert "above 0" in issue.hint


def test_step_timeout_above_policy_budget() -> None:
    issue = only_issue(BASE.replace("timeout: 10ms", "timeout: 50ms"))
    assert where(issue) == (7, 9, "policies.search.chain[0].timeout")
    assert "timeout 50ms is above the policy budget 30ms" in issue.message
    assert issue.hint == "lower the timeout or raise the budget"


def test_default_timeout_above_a_small_budget() -> None:
    # session's default timeout is 10ms, not written in the file.
    issue = only_issue(
        BASE.replace("budget: 30ms", "budget: 5ms").replace("timeout: 10ms", "id: s")
    )
    assert where(issue) == (6, 9, "policies.search.chain[0].timeout")
    assert "timeout 10ms is above the policy budget 5ms" in issue.message


def test_chain_whose_last_tier_can_fail() -> None:
    issue = only_issue(BASE.replace("      - type: unpersonalized\n", ""))
    assert where(issue) == (8, 9, "policies.search.chain[1]")
    assert "ends with 'stale_cache', which can fail" in issue.message
    assert "terminal tier such as 'unpersonalized'" in issue.hint


def test_terminal_tier_not_last() -> None:
    text = BASE.replace(
        "      - type: session\n",
        "      - type: unpersonalized\n        id: early\n      - type: session\n",
    )
    issue = only_issue(text)
    assert where(issue) == (6, 9, "policies.search.chain[0]")
    assert "terminal tier 'early' is not last" in issue.message
    assert "can never run" in issue.message
    assert issue.hint == "move it to the end of the chain"


def test_empty_chain() -> None:
    issue = only_issue("version: 1\npolicies:\n  search:\n    chain: []\n")
    assert where(issue) == (4, 5, "policies.search.chain")
    assert "the chain is empty" in issue.message
    assert "'unpersonalized'" in issue.hint


def test_missing_chain() -> None:
    issue = only_issue("version: 1\npolicies:\n  search:\n    budget: 30ms\n")
    assert where(issue) == (3, 3, "policies.search.chain")  # at the policy that lacks it
    assert "missing required key 'chain'" in issue.message
    assert issue.hint == "add 'chain:'"


def test_duplicate_step_ids_within_a_policy() -> None:
    text = BASE.replace(
        "      - type: stale_cache\n        max_age: 5m\n", "      - type: session\n"
    )
    issue = only_issue(text)
    assert where(issue) == (8, 9, "policies.search.chain[1]")
    assert "step id 'session' is used twice" in issue.message
    assert "also at policies.search.chain[0]" in issue.message
    assert "own 'id:'" in issue.hint


def test_duplicate_explicit_step_ids_point_at_the_id() -> None:
    text = BASE.replace("max_age: 5m", "max_age: 5m\n        id: session")
    issue = only_issue(text)
    assert where(issue) == (10, 9, "policies.search.chain[1].id")
    assert "step id 'session' is used twice" in issue.message


def test_same_step_id_in_two_policies_is_fine() -> None:
    text = BASE + "  other:\n    chain: [unpersonalized]\n"
    loaded = load_policies(text)
    assert list(loaded.policies) == ["search", "other"]


@pytest.mark.parametrize("step_id", ["Bad-Id", "1st", "_x", "a b"])
def test_invalid_step_id(step_id: str) -> None:
    text = BASE.replace(
        "      - type: session\n", f"      - type: session\n        id: '{step_id}'\n"
    )
    issue = only_issue(text)
    assert where(issue) == (7, 9, "policies.search.chain[0].id")
    assert f"step id {step_id!r} is not valid" in issue.message
    assert "lowercase letters, digits and '_'" in issue.hint


def test_invalid_policy_name() -> None:
    issue = only_issue("version: 1\npolicies:\n  Search-1:\n    chain: [unpersonalized]\n")
    assert where(issue) == (3, 3, "policies.Search-1")
    assert "policy name 'Search-1' is not valid" in issue.message
    assert "lowercase" in issue.hint


# --- file level -------------------------------------------------------------------------------


def test_unknown_format_version() -> None:
    issue = only_issue(BASE.replace("version: 1", "version: 2"))
    assert where(issue) == (1, 1, "version")
    assert issue.message == "unknown format version 2"
    assert issue.hint == "this release reads version 1"
    assert str(issue) == (
        "<string>:1:1: version: unknown format version 2 (this release reads version 1)"
    )


def test_missing_version() -> None:
    issue = only_issue(BASE.replace("version: 1\n", ""))
    assert where(issue) == (1, 1, "version")
    assert "missing required key 'version'" in issue.message
    assert issue.hint == "add 'version:'"


def test_missing_policies() -> None:
    issue = only_issue("version: 1\ndefault_policy: search\n")
    assert where(issue) == (1, 1, "policies")
    assert "missing required key 'policies'" in issue.message
    assert issue.hint == "add 'policies:'"


def test_no_policies() -> None:
    issue = only_issue("version: 1\npolicies: {}\n")
    assert where(issue) == (2, 1, "policies")
    assert issue.hint == "add at least one entry"


def test_default_policy_naming_an_unknown_policy() -> None:
    issue = only_issue("version: 1\ndefault_policy: serch\n" + BASE.removeprefix("version: 1\n"))
    assert where(issue) == (2, 1, "default_policy")
    assert issue.message == "no policy named 'serch'"
    assert issue.hint == "did you mean 'search'?"


def test_unknown_top_level_key() -> None:
    issue = only_issue(BASE + "polices: {}\n")
    assert where(issue) == (11, 1, "polices")
    assert "unknown parameter 'polices'" in issue.message
    assert issue.hint == "did you mean 'policies'?"


def test_settings_sample_rate_out_of_range() -> None:
    text = "version: 1\nsettings:\n  events:\n    decision_sample_rate: 2\n" + BASE[11:]
    issue = only_issue(text)
    assert where(issue) == (4, 5, "settings.events.decision_sample_rate")
    assert "less than or equal to 1" in issue.message
    assert issue.hint == "use a value of at most 1.0"


def test_unknown_settings_key() -> None:
    text = "version: 1\nsettings:\n  event:\n    decision_sample_rate: 0.5\n" + BASE[11:]
    issue = only_issue(text)
    assert where(issue) == (3, 3, "settings.event")
    assert "unknown parameter 'event'" in issue.message
    assert issue.hint == "did you mean 'events'?"


def test_unknown_nested_settings_key() -> None:
    text = "version: 1\nsettings:\n  events:\n    sample_rate: 0.5\n" + BASE[11:]
    issue = only_issue(text)
    assert where(issue) == (4, 5, "settings.events.sample_rate")
    assert "unknown parameter 'sample_rate'" in issue.message
    assert "decision_sample_rate" in issue.hint


def test_file_name_appears_in_issues() -> None:
    with pytest.raises(PolicyValidationError) as info:
        load_policies(BASE.replace("version: 1", "version: 2"), file="conf/p.yaml")
    assert str(info.value.issues[0]).startswith("conf/p.yaml:1:1: version: ")
    assert "1 problem in policy file" in str(info.value)


# --- engine build -----------------------------------------------------------------------------


def test_unbound_source_is_reported_at_engine_build(reference_yaml: str) -> None:
    loaded = load_policies(reference_yaml)  # the file itself is valid
    sources = {"profile_store": lambda key: None, "segment_store": lambda key: None}
    with pytest.raises(SourceBindingError) as info:
        Engine(loaded, sources=sources, events=NullSink())
    assert isinstance(info.value, PolicyValidationError)
    (issue,) = info.value.issues
    lines = reference_yaml.splitlines()
    step_line = next(n for n, text in enumerate(lines, 1) if "- type: session" in text)
    assert issue.line == step_line
    assert issue.column == lines[step_line - 1].index("type") + 1
    assert issue.path == "policies.search.chain[0].source"
    assert issue.path.endswith(".source")
    assert issue.message == "source 'session_store' is not bound"
    assert "sources={'session_store': ...}" in issue.hint
    assert "bound: profile_store, segment_store" in issue.hint


def test_source_bound_to_a_non_callable(reference_yaml: str) -> None:
    sources = {"session_store": 42, "profile_store": dict.get, "segment_store": dict.get}
    with pytest.raises(SourceBindingError) as info:
        Engine(load_policies(reference_yaml), sources=sources, events=NullSink())
    (issue,) = info.value.issues
    assert issue.path == "policies.search.chain[0].source"
    assert "not callable" in issue.message
    assert issue.hint == "bind a callable"


def test_stale_cache_that_no_session_tier_feeds(make_engine: Callable[..., Engine]) -> None:
    text = "version: 1\npolicies:\n  search:\n    chain: [stale_cache, unpersonalized]\n"
    assert isinstance(load_policies(text), PolicySet)  # only the engine build can tell
    with pytest.raises(PolicyValidationError) as info:
        make_engine(text, {})
    assert not isinstance(info.value, SourceBindingError)
    (issue,) = info.value.issues
    assert where(issue) == (4, 13, "policies.search.chain[0]")
    assert "no tier feeds the cache 'session'" in issue.message
    assert "cache: session" in str(issue)


def test_stale_cache_fed_by_a_session_tier_with_another_cache(
    make_engine: Callable[..., Engine],
) -> None:
    text = BASE.replace("timeout: 10ms", "timeout: 10ms\n        cache: other")
    sources = {"session_store": dict.get, "profile_store": dict.get}
    with pytest.raises(PolicyValidationError) as info:
        make_engine(text, sources)
    (issue,) = info.value.issues
    assert where(issue) == (9, 9, "policies.search.chain[1]")
    assert "no tier feeds the cache 'session'" in issue.message


# --- several problems, valid files ------------------------------------------------------------


def test_every_problem_is_reported_in_one_pass_sorted_by_line() -> None:
    text = """\
version: 1
default_policy: serch
policies:
  search:
    chain:
      - type: stale_cach
      - unpersonalized
  browse:
    chain:
      - type: session
        timout: 10ms
      - unpersonalized
  home:
    chain:
      - type: session
        blend_k: 0
      - unpersonalized
"""
    issues = issues_of(text)
    assert [where(i) for i in issues] == [
        (2, 1, "default_policy"),
        (6, 9, "policies.search.chain[0].type"),
        (11, 9, "policies.browse.chain[0].timout"),
        (16, 9, "policies.home.chain[0].blend_k"),
    ]
    assert [i.line for i in issues] == sorted(i.line for i in issues)
    with pytest.raises(PolicyValidationError, match="4 problems in policy file"):
        load_policies(text)


def test_reference_file_loads(reference_yaml: str) -> None:
    loaded = load_policies(reference_yaml)
    assert list(loaded.policies) == ["search"]
    assert loaded.default_policy == "search"
    policy = loaded.policies["search"]
    assert policy.budget == pytest.approx(0.030)
    assert [s.step_id for s in policy.chain] == [
        "session",
        "stale_cache",
        "profile_only",
        "segment",
        "unpersonalized",
    ]
    assert [g.step_id for g in policy.guards] == ["error_rate"]
    assert [p.step_id for p in policy.post] == ["boost_cap", "exploration"]
    assert set(loaded.sources) == {"session_store", "profile_store"}
    assert loaded.settings.plugins.allow == []
    assert loaded.settings.events.decision_sample_rate == pytest.approx(0.001)
    assert len(policy.version) == 12
    assert len(loaded.version) == 12


def test_string_shorthand_for_a_step() -> None:
    long_form = load_policies(BASE)
    short = load_policies(BASE.replace("- type: unpersonalized", "- unpersonalized"))
    spec = short.policies["search"].chain[-1]
    assert spec.type.name == spec.step_id == "unpersonalized"
    assert (spec.line, spec.column, spec.path) == (10, 9, "policies.search.chain[2]")
    assert short.policies["search"].version == long_form.policies["search"].version


def test_load_policies_file_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(BASE.replace("type: stale_cache", "type: stale_cach"))
    with pytest.raises(PolicyValidationError) as info:
        load_policies_file(path)
    assert str(info.value.issues[0]).startswith(f"{path}:8:9: policies.search.chain[1].type: ")


def test_load_policies_file_on_a_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PolicyValidationError) as info:
        load_policies_file(missing)
    assert not isinstance(info.value, OSError)
    (issue,) = info.value.issues
    assert (issue.file, issue.line, issue.column, issue.path) == (str(missing), 0, 0, "")
    assert "cannot read the file" in issue.message
    assert "No such file" in issue.message
    assert "check the path" in issue.hint


def test_load_policies_file_on_a_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyValidationError) as info:
        load_policies_file(tmp_path)
    assert "cannot read the file" in info.value.issues[0].message


# --- config version ---------------------------------------------------------------------------

REORDERED = """\
policies:


  search:
    chain:
      - max_age: 5m
        type: stale_cache
      - {type: unpersonalized}
    budget: 30ms      # a comment
version: 1
"""


def test_config_version_ignores_comments_whitespace_and_key_order() -> None:
    base = load_policies(BASE.replace("      - type: session\n        timeout: 10ms\n", ""))
    other = load_policies(REORDERED)
    assert other.policies["search"].version == base.policies["search"].version
    assert other.version == base.version


def test_config_version_of_the_reference_file_ignores_comments(reference_yaml: str) -> None:
    stripped = "\n".join(
        line.split(" #")[0].rstrip() for line in reference_yaml.splitlines() if "#" not in line[:1]
    )
    assert stripped != reference_yaml
    assert load_policies(stripped).version == load_policies(reference_yaml).version


def test_config_version_changes_when_a_parameter_changes() -> None:
    base = load_policies(BASE)
    changed = load_policies(BASE.replace("max_age: 5m", "max_age: 6m"))
    assert changed.policies["search"].version != base.policies["search"].version
    assert changed.version != base.version


def test_config_version_changes_when_the_order_of_tiers_changes() -> None:
    session = "      - type: session\n        timeout: 10ms\n"
    cached = "      - type: stale_cache\n        max_age: 5m\n"
    swapped = BASE.replace(session + cached, cached + session)
    assert swapped != BASE
    assert load_policies(swapped).version != load_policies(BASE).version


def test_config_version_equal_when_defaults_are_written_out() -> None:
    explicit = BASE.replace(
        "timeout: 10ms",
        "timeout: 10ms\n        id: session\n        blend_k: 3\n        decay: null\n"
        "        source: session_store",
    ).replace("max_age: 5m", "max_age: 300s\n        max_entries: 100000\n        cache: session")
    assert load_policies(explicit).version == load_policies(BASE).version
    assert (
        load_policies(explicit).policies["search"].version
        == load_policies(BASE).policies["search"].version
    )


def test_settings_change_the_file_version_but_not_the_policy_version() -> None:
    with_settings = BASE.replace(
        "version: 1\n", "version: 1\nsettings:\n  events:\n    decision_sample_rate: 0.5\n"
    )
    a, b = load_policies(BASE), load_policies(with_settings)
    assert a.policies["search"].version == b.policies["search"].version
    assert a.version != b.version


# --- once bugs: a policy named 'str', merge keys ---------------------------------------------


def test_policy_named_str_keeps_its_name_in_issue_paths() -> None:
    issue = only_issue(
        "version: 1\npolicies:\n  str:\n    budget: 10\n    chain: [unpersonalized]\n"
    )
    assert where(issue) == (4, 5, "policies.str.budget")


def test_merge_key_is_reported_as_such() -> None:
    text = "version: 1\npolicies:\n  a:\n    <<: {budget: 30ms}\n    chain: [unpersonalized]\n"
    issue = only_issue(text)
    assert where(issue) == (4, 5, "policies.a")
    assert "merge keys (<<) are not supported" in issue.message


# --- property: load_policies only ever returns a PolicySet or raises PolicyValidationError --


def _loads_or_reports(text: str | bytes) -> None:
    try:
        result = load_policies(text)
    except PolicyValidationError as exc:
        issues = exc.issues
    else:
        assert isinstance(result, PolicySet)
        return
    assert issues
    for issue in issues:
        assert issue.line >= 0
        assert issue.column >= 0
        assert str(issue).startswith(f"{issue.file}:{issue.line}:{issue.column}: ")


_REFERENCE = (Path(__file__).resolve().parent.parent / "policies.yaml").read_text()
_REFERENCE_LINES = _REFERENCE.splitlines(keepends=True)
_YAMLISH = st.text(alphabet=st.sampled_from(list(":-[]{}&*!|>'\"#\n\t 019.,abcmsu_~")), max_size=12)


@settings(max_examples=150, deadline=None)
@given(st.text() | st.binary())
def test_arbitrary_input_is_loaded_or_reported(text: str | bytes) -> None:
    _loads_or_reports(text)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mutated_reference_file_is_loaded_or_reported(data: st.DataObject) -> None:
    start = data.draw(st.integers(0, len(_REFERENCE)), label="start")
    end = data.draw(st.integers(start, min(len(_REFERENCE), start + 24)), label="end")
    replacement = data.draw(_YAMLISH | st.text(max_size=6), label="replacement")
    _loads_or_reports(_REFERENCE[:start] + replacement + _REFERENCE[end:])


@settings(max_examples=50, deadline=None)
@given(st.integers(0, len(_REFERENCE_LINES) - 1))
def test_reference_file_without_one_line_is_loaded_or_reported(index: int) -> None:
    _loads_or_reports("".join(_REFERENCE_LINES[:index] + _REFERENCE_LINES[index + 1 :]))


def test_a_plain_date_is_read_as_text() -> None:
    text = BASE.replace("  search:\n", "  search:\n    description: 2024-01-01\n")
    assert load_policies(text).policies["search"].description == "2024-01-01"


@pytest.mark.parametrize("value", ["true", "1.0", "'1'"])
def test_a_version_that_only_equals_one_is_refused(value: str) -> None:
    issue = only_issue(BASE.replace("version: 1", f"version: {value}"))
    assert "unknown format version" in issue.message


def test_a_step_without_type_names_the_types_it_could_be() -> None:
    issue = only_issue(BASE.replace("chain:", "post: [{id: x}]\n    chain:", 1))
    assert issue.message == "step has no 'type'"
    assert issue.hint == "add 'type:' with one of: boost_cap, exploration"
