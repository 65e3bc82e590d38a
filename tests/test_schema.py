"""``resilience schema``: a JSON Schema of the policy file that a standard validator, and so an
editor's YAML language server, checks policy files with."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from resilience import PluginHost
from resilience._schema import policy_schema
from resilience.cli import main

from .conftest import ROOT


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = policy_schema(PluginHost(allow=None))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(validator: jsonschema.Draft202012Validator, doc: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize(
    "path",
    [ROOT / "policies.yaml", ROOT / "examples" / "search_service" / "policies.yaml"],
    ids=lambda p: str(Path(p).relative_to(ROOT)),
)
def test_the_shipped_policy_files_validate(
    validator: jsonschema.Draft202012Validator, path: Path
) -> None:
    assert errors(validator, yaml.safe_load(path.read_text())) == []


@pytest.fixture
def reference() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "policies.yaml").read_text())
    return doc


def first_policy(doc: dict[str, Any]) -> dict[str, Any]:
    policy: dict[str, Any] = next(iter(doc["policies"].values()))
    return policy


@pytest.mark.parametrize(
    "break_it",
    [
        pytest.param(lambda p: p["chain"].insert(0, {"type": "no_such_tier"}), id="unknown-step"),
        pytest.param(lambda p: p["chain"].insert(0, "no_such_tier"), id="unknown-shorthand"),
        pytest.param(lambda p: p["guards"].append({"type": "session"}), id="tier-as-guard"),
        pytest.param(
            lambda p: p["chain"].insert(0, {"type": "profile_only", "timout": "5ms"}),
            id="unknown-key",
        ),
        pytest.param(
            lambda p: p["chain"].insert(0, {"type": "profile_only", "timeout": 5}),
            id="duration-without-unit",
        ),
        pytest.param(
            lambda p: p["post"].append({"type": "exploration", "share": 1.5}), id="out-of-range"
        ),
        pytest.param(
            lambda p: p["chain"].insert(0, {"type": "profile_only", "mode": "shadow"}),
            id="tier-in-shadow",
        ),
        pytest.param(
            lambda p: p["chain"].insert(0, {"type": "profile_only", "isolation": "threads"}),
            id="bad-isolation",
        ),
        pytest.param(lambda p: p.update(budgett="30ms"), id="unknown-policy-key"),
    ],
)
def test_a_structural_mistake_is_refused(
    validator: jsonschema.Draft202012Validator, reference: dict[str, Any], break_it: Any
) -> None:
    broken = copy.deepcopy(reference)
    break_it(first_policy(broken))
    assert errors(validator, broken)


def test_an_installed_plugin_s_steps_are_in_it(validator: jsonschema.Draft202012Validator) -> None:
    """The example plugin, installed by make setup: an editor completes its tier too."""
    doc = {
        "version": 1,
        "settings": {"plugins": {"allow": ["trending"]}},
        "policies": {
            "p": {"chain": [{"type": "trending_region", "timeout": "3ms"}, "unpersonalized"]}
        },
    }
    assert errors(validator, doc) == []
    doc["policies"]["p"]["chain"][0]["region_attribute"] = "x"
    assert errors(validator, doc)


def test_the_cli_prints_it_and_writes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    target = tmp_path / "policies.schema.json"
    assert main(["schema", "-o", str(target)]) == 0
    assert json.loads(target.read_text()) == printed


def test_every_default_in_it_is_a_value_it_accepts() -> None:
    # An editor fills in a default where the author asks for one: it must be what the file
    # takes (a duration as "10ms", never pydantic's float seconds).
    schema = policy_schema(PluginHost(allow=None))
    found: list[tuple[str, Any, dict[str, Any]]] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "default" in node and node["default"] is not None:
                found.append((path, node["default"], node))
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}/{index}")

    walk(schema, "")
    assert len(found) > 50
    refused = []
    for path, default, node in found:
        own = {k: v for k, v in node.items() if k != "default"}
        checker = jsonschema.Draft202012Validator({"$defs": schema["$defs"], **own})
        if not checker.is_valid(default):
            refused.append(f"{path}: {default!r}")
    assert not refused, refused
