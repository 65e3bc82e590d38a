"""The package as users get it: its public names, its wheel, and its pytest plugin."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import resilience

from .conftest import ROOT

pytest_plugins = ["pytester"]


def test_all_lists_exactly_the_public_names() -> None:
    # pytest may rewrite the package (it ships a pytest plugin) and add "@py_builtins".
    public = {n for n in vars(resilience) if n.isidentifier() and not n.startswith("_")}
    modules = {
        "cli",
        "events",
        "hookspecs",
        "metrics",
        "otel",
        "population",
        "simulation",
        "testing",
    }  # submodules, importable but not re-exported
    assert set(resilience.__all__) == public - modules
    assert len(resilience.__all__) == len(set(resilience.__all__))
    for name in resilience.__all__:
        assert getattr(resilience, name) is not None


def test_every_module_is_private_except_the_documented_ones() -> None:
    package = Path(resilience.__file__).parent
    public = sorted(p.stem for p in package.glob("*.py") if not p.stem.startswith("_"))
    assert public == ["cli", "events", "hookspecs", "metrics", "otel", "population"]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to list the sources")
def test_the_wheel_ships_no_bare_plugins_module(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.endswith(".dist-info/RECORD")}
    assert "plugins" not in tops
    assert {"resilience", "resilience_plugins"} <= tops
    assert "resilience/py.typed" in names
    assert "resilience_plugins/tiers/session.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "resilience = resilience.cli:main" in text
    assert "[pytest11]" in text


def test_the_pytest_plugin_gives_fixtures_to_a_fresh_session(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        from resilience import Outcome, RequestContext

        POLICY = '''
        version: 1
        default_policy: p
        policies:
          p:
            chain: [profile_only, unpersonalized]
        '''

        def test_kit(make_engine, faulty_source, fake_clock, recording_sink):
            profile = faulty_source({}).slow(0.5)
            engine = make_engine(POLICY, {"profile_store": profile})
            decision = engine.decide(RequestContext(user_id="u"))
            assert decision.trace.outcome_of("profile_only") is Outcome.TIMEOUT
            assert fake_clock.monotonic() >= 1000.5
            assert "resilience.engine.built" in recording_sink.names()
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_the_version_is_written_once_and_the_changelog_names_it() -> None:
    """pyproject.toml holds the release; the package, the CLI and the changelog agree with it,
    and no module writes it again."""
    import re
    import tomllib
    from importlib.metadata import version

    from resilience.cli import main

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert resilience.__version__ == version("search-resilience") == declared
    changelog = (ROOT / "CHANGELOG.md").read_text()
    releases = re.findall(r"(?m)^## (\S+)", changelog)
    assert releases and releases[0] == declared, releases
    for module in (ROOT / "resilience").rglob("*.py"):
        assert f'"{declared}"' not in module.read_text(), f"{module} writes the version again"
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0


def test_the_cli_names_the_versions_users_depend_on(capsys: pytest.CaptureFixture[str]) -> None:
    from resilience.cli import main
    from resilience.hookspecs import API_VERSION

    with pytest.raises(SystemExit):
        main(["--version"])
    out = capsys.readouterr().out
    assert out.strip() == (
        f"search-resilience {resilience.__version__} "
        f"(policy format {resilience.FORMAT_VERSION}, plugin API {API_VERSION})"
    )


def test_the_example_plugin_depends_on_this_distribution_and_only_its_compatible_releases() -> None:
    # "resilience" on PyPI is an unrelated project: a plugin naming it installs someone else's
    # code beside the engine.
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    ours = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    example = tomllib.loads((ROOT / "examples" / "trending_plugin" / "pyproject.toml").read_text())
    requirements = [Requirement(r) for r in example["project"]["dependencies"]]
    engine = [r for r in requirements if r.name == ours["name"]]
    assert len(engine) == 1, requirements
    assert Version(ours["version"]) in engine[0].specifier
    assert not engine[0].specifier.contains("1.0"), "pin below the next major release"
    assert {r.name.lower() for r in requirements} & {"resilience"} == set()
