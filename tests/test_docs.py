"""The docs cannot rot: every fenced block is checked by what it says it is, and every generated
table matches the code it is generated from.

Each block's info string names its language and, after it, how it is checked (the table in
``docs/README.md``). A block without one, or with one this module does not know, fails.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from resilience import PluginHost
from resilience._flags_file import parse_flags
from resilience._reference import render_parameter_tables
from resilience._yaml import read_yaml
from resilience.events import EVENTS
from resilience.metrics import METRICS
from resilience.simulation import load_scenario

from .conftest import REFERENCE_POLICIES, ROOT

DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "docs" / "steps").glob("*.md")),
    *sorted((ROOT / "examples").glob("*/README.md")),
]
STEP_OUTLINE = ["Options", "Behaviour", "Telemetry", "Patterns", "Anti-patterns"]

# A fence as CommonMark has them: three or more backticks or tildes, after any indentation and
# blockquote marks; it closes on a line of the same character, at least as many, and nothing else.
_OPENING = re.compile(r"^(?P<prefix>[ \t]*(?:>[ \t]?)*[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_QUOTE = re.compile(r"^[ \t]*(?:>[ \t]?)+")


@dataclass(frozen=True)
class Block:
    """One fenced block of a page."""

    page: Path
    line: int
    language: str
    words: tuple[str, ...]  # what follows the language: the kind of check, and options
    body: str

    @property
    def where(self) -> str:
        return f"{_shown(self.page)}:{self.line}"

    def option(self, name: str) -> str | None:
        for word in self.words:
            key, _, value = word.partition("=")
            if key == name and value:
                return value
        return None

    @property
    def kind(self) -> str:
        return next((w for w in self.words if "=" not in w and w != "invalid"), "")

    @property
    def invalid(self) -> bool:
        return "invalid" in self.words


def _shown(page: Path) -> str:
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else str(page)


class UnclosedFenceError(Exception):
    """A page has a fence that never closes: everything after it would escape the checks."""


def blocks_of(page: Path) -> list[Block]:
    lines = page.read_text().split("\n")
    found = []
    opened: tuple[int, str, str, bool] | None = None  # line, fence, info, in a blockquote
    body: list[str] = []
    for number, line in enumerate(lines, 1):
        if opened is None:
            match = _OPENING.match(line)
            if match:
                quoted = ">" in match.group("prefix")
                opened, body = (number, match.group("fence"), match.group("info"), quoted), []
            continue
        start, fence, info, quoted = opened
        content = _QUOTE.sub("", line) if quoted else line
        stripped = content.strip()
        if stripped and set(stripped) == {fence[0]} and len(stripped) >= len(fence):
            words = info.split()
            text = textwrap.dedent("\n".join(body) + "\n") if body else ""
            found.append(Block(page, start, words[0] if words else "", tuple(words[1:]), text))
            opened = None
        else:
            body.append(content)
    if opened is not None:
        raise UnclosedFenceError(f"{_shown(page)}:{opened[0]}: this fence never closes")
    return found


ALL_BLOCKS = [block for page in DOCS for block in blocks_of(page)]


def _blocks(*languages: str, kind: str | None = None) -> list[Any]:
    chosen = [
        b
        for b in ALL_BLOCKS
        if b.language in languages
        and (kind is None or b.kind == kind)
        and not (b.language == "python" and b.option("excerpt"))
    ]
    return [
        pytest.param(b, id=f"{b.where} {b.language} {' '.join(b.words)}".strip()) for b in chosen
    ]


# -- every block is checked by something ---------------------------------------------------------

_KNOWN: dict[str, set[str]] = {
    "python": {"", "excerpt"},
    "yaml": {"file", "fragment", "policy", "flags", "scenario", "prometheus", "modeline"},
    "toml": {"excerpt"},
    "sh": {""},
    "console": {"", "exact"},
    "json": {""},
    "promql": {""},
    "text": {""},
}


def test_every_fenced_block_says_how_it_is_checked() -> None:
    problems = []
    for block in ALL_BLOCKS:
        kinds = _KNOWN.get(block.language)
        kind = "excerpt" if block.option("excerpt") else block.kind
        if kinds is None:
            problems.append(f"{block.where}: language {block.language or '(none)'!r}")
        elif kind not in kinds:
            problems.append(f"{block.where}: {block.language} block of kind {kind or '(none)'!r}")
        elif block.language in {"toml"} and not block.option("excerpt"):
            problems.append(f"{block.where}: a toml block must be an excerpt=PATH")
    assert not problems, (
        "fenced blocks the suite cannot check (see 'How the docs are checked' in "
        "docs/README.md):\n" + "\n".join(problems)
    )


# -- python ----------------------------------------------------------------------------------------


def _runnable(page: Path) -> list[Block]:
    return [b for b in blocks_of(page) if b.language == "python" and not b.option("excerpt")]


@pytest.mark.parametrize(
    "page", [p for p in DOCS if _runnable(p)], ids=lambda p: str(p.relative_to(ROOT))
)
def test_every_python_example_runs(
    page: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    # Examples name policies.yaml as a user in the project would; a page that shows its own
    # files (a block with name=FILE) runs its examples beside them instead.
    saved = [b for b in blocks_of(page) if b.option("name")]
    for block in saved:
        (tmp_path / str(block.option("name"))).write_text(block.body)
    monkeypatch.chdir(tmp_path if saved else ROOT)
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for block in _runnable(page):
        code = compile(block.body, block.where, "exec", dont_inherit=True)
        exec(code, namespace)  # running our own documentation is the point


@pytest.mark.parametrize(
    "block", [pytest.param(b, id=b.where) for b in ALL_BLOCKS if b.option("excerpt")]
)
def test_every_excerpt_is_found_in_its_file(block: Block) -> None:
    path = block.option("excerpt")
    assert path is not None
    source = ROOT / path
    assert source.is_file(), f"{block.where}: excerpt of {path}, which does not exist"
    wanted = block.body.rstrip("\n").split("\n")
    lines = source.read_text().split("\n")
    for start in range(len(lines) - len(wanted) + 1):
        window = "\n".join(lines[start : start + len(wanted)])
        if textwrap.dedent(window) == "\n".join(wanted):
            return
    pytest.fail(f"{block.where}: these lines are not (or no longer) in {path}:\n{block.body}")


# -- yaml ------------------------------------------------------------------------------------------


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``patch`` laid over ``into``: mappings merge, anything else (lists too) replaces."""
    merged = dict(into)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read(text: str, where: str) -> Any:
    """YAML read as the engine reads it (``on`` and ``off`` are strings, not booleans)."""
    located, issues = read_yaml(text, where)
    assert located is not None and not issues, f"{where}: {issues}"
    return located.data


def _policy_file(block: Block) -> dict[str, Any]:
    data = _read(block.body, block.where)
    assert isinstance(data, dict), f"{block.where}: a {block.kind} block is a mapping"
    if block.kind == "file":
        return data
    reference = _read(REFERENCE_POLICIES.read_text(), "policies.yaml")
    if block.kind == "fragment":
        return _merge(reference, data)
    search = _merge(reference["policies"]["search"], data)
    return _merge(reference, {"policies": {"search": search}})


def _validate(document: dict[str, Any], directory: Path) -> tuple[int, str]:
    from resilience import cli

    path = directory / "policies.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["validate", str(path)])
    return code, out.getvalue() + err.getvalue()


@pytest.mark.parametrize(
    "block",
    [
        *_blocks("yaml", kind="file"),
        *_blocks("yaml", kind="fragment"),
        *_blocks("yaml", kind="policy"),
    ],
)
def test_every_policy_example_validates(block: Block, tmp_path: Path) -> None:
    code, said = _validate(_policy_file(block), tmp_path)
    if block.invalid:
        assert code == 1, f"{block.where}: shown as refused, but it validates:\n{said}"
        shown = _refusal_shown_after(block)
        messages = {_without_location(line) for line in said.split("\n")}
        missing = [line for line in shown if line not in messages]
        assert not missing, (
            f"{block.where}: the refusal the page shows is not what validate says:\n"
            + "\n".join(missing)
            + f"\nvalidate says:\n{said}"
        )
    else:
        assert code == 0, f"{block.where}: does not validate:\n{said}"


_LOCATION = re.compile(r"^\S+?:\d+:\d+: ")
_SUMMARY = re.compile(r"^\S+: \d+ problems?$")


def _without_location(line: str) -> str:
    # Positions differ: the page's example sits in the reference file at another line.
    return _LOCATION.sub("", line.strip())


def _refusal_shown_after(block: Block) -> list[str]:
    """The messages of the ``text`` block that follows a refused example on its page, without
    their positions; every refused example shows what validate says of it."""
    following = [b for b in blocks_of(block.page) if b.line > block.line]
    assert following and following[0].language == "text", (
        f"{block.where}: follow a refused example with a text block of what validate says"
    )
    lines = [_without_location(line) for line in following[0].body.split("\n")]
    return [line for line in lines if line and not _SUMMARY.match(line)]


@pytest.mark.parametrize("block", _blocks("yaml", kind="flags"))
def test_every_flags_example_reads(block: Block) -> None:
    flags, error = parse_flags(block.body, block.where)
    assert flags is not None, error


@pytest.mark.parametrize("block", _blocks("yaml", kind="scenario"))
def test_every_scenario_example_loads(block: Block) -> None:
    load_scenario(block.where, text=block.body)  # raises ScenarioError, with lines, if wrong


def _check_promql(expression: str, where: str) -> None:
    import promql_parser

    promql_parser.parse(expression)  # raises on a syntax error
    PluginHost(entry_points_=[])  # the built-in steps' metrics are registered on import
    names = set(re.findall(r"\bresilience_[a-z0-9_]+", expression))
    assert names, f"{where}: names no metric of the project: {expression}"
    for name in names:
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        assert base in METRICS or name in METRICS, f"{where}: no metric {name!r}"


@pytest.mark.parametrize("block", _blocks("yaml", kind="prometheus"))
def test_every_alert_rule_parses_and_names_real_metrics(block: Block) -> None:
    rules = [r for group in yaml.safe_load(block.body)["groups"] for r in group["rules"]]
    assert rules, block.where
    for rule in rules:
        _check_promql(rule["expr"], f"{block.where} {rule.get('alert', '')}")


@pytest.mark.parametrize("block", _blocks("promql"))
def test_every_promql_example_parses_and_names_real_metrics(block: Block) -> None:
    for expression in filter(None, (line.strip() for line in block.body.split("\n"))):
        _check_promql(expression, block.where)


@pytest.mark.parametrize("block", _blocks("yaml", kind="modeline"))
def test_the_modeline_points_at_the_schema_the_docs_write(block: Block) -> None:
    assert re.fullmatch(r"# yaml-language-server: \$schema=policies\.schema\.json\n", block.body), (
        block.where
    )


# -- json ------------------------------------------------------------------------------------------


def _json_values(text: str) -> Iterator[Any]:
    decoder = json.JSONDecoder()
    at = 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return
        value, at = decoder.raw_decode(text, at)
        yield value


@pytest.mark.parametrize("block", _blocks("json"))
def test_every_json_example_parses_and_names_real_events(block: Block) -> None:
    PluginHost(entry_points_=[])
    values = list(_json_values(block.body.replace("...", "")))
    assert values, block.where
    for value in values:
        if isinstance(value, dict) and "event" in value:
            assert value["event"] in EVENTS, f"{block.where}: no event {value['event']!r}"


# -- commands --------------------------------------------------------------------------------------


def _commands(block: Block) -> list[list[str]]:
    """The command lines of a ``sh`` or ``console`` block, split as the shell would."""
    lines = block.body.split("\n")
    if block.language == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    commands = []
    for line in joined.split("\n"):
        words = shlex.split(line, comments=True)
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
            words = words[1:]  # VAR=value before a command
        if words:
            commands.append(words)
    return commands


def _parses(parser: Any, args: list[str]) -> str | None:
    """Why ``parser`` refuses ``args``; ``None`` when it takes them (``--help`` and
    ``--version`` included)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as exc:
        return None if exc.code == 0 else err.getvalue().strip()
    return None


def _resilience(args: list[str]) -> str | None:
    from resilience import cli

    return _parses(cli._parser(), args)


def _python_module(args: list[str]) -> str | None:
    if args[:1] != ["-m"] or len(args) < 2:
        return f"python {' '.join(args)}: only `python -m MODULE` is documented"
    module, rest = args[1], args[2:]
    if module == "benchmarks" and rest[:1] == ["profile"]:
        from benchmarks import profile

        return _parses(profile.parser(), rest[1:])
    if module == "benchmarks":
        from benchmarks.__main__ import parser

        return _parses(parser(), rest)
    if module == "examples.search_service.load":
        from examples.search_service import load

        return _parses(load.parser(), rest)
    if module == "resilience":
        return _resilience(rest)
    if module == "resilience._reference":
        return None if rest else "python -m resilience._reference needs the pages to regenerate"
    return f"python -m {module}: not a documented entry point"


def _make(args: list[str]) -> str | None:
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    missing = [a for a in args if not a.startswith("-") and a not in targets]
    return f"make: no target {missing}" if missing else None


def _pip(args: list[str]) -> str | None:
    if args[:1] != ["install"]:
        return f"pip {' '.join(args)}: only pip install is documented"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = set(project["optional-dependencies"])
    for arg in args[1:]:
        if arg.startswith("-"):
            continue
        name, _, rest = arg.partition("[")
        wanted = set(rest.rstrip("]").split(",")) - {""}
        if name in {".", project["name"]}:
            if wanted - extras:
                return f"pip install {arg}: no extra {sorted(wanted - extras)}"
        elif not (ROOT / name / "pyproject.toml").is_file():
            return f"pip install {arg}: not this project, nor a package in it"
    return None


def _uvicorn(args: list[str]) -> str | None:
    import importlib

    target = next(a for a in args if not a.startswith("-"))
    module, _, attribute = target.partition(":")
    if not hasattr(importlib.import_module(module), attribute):
        return f"uvicorn {target}: {module} has no {attribute}"
    return None


_PROGRAMS: dict[str, Callable[[list[str]], str | None]] = {
    "resilience": _resilience,
    "python": _python_module,
    "make": _make,
    "pip": _pip,
    "uvicorn": _uvicorn,
    # the shell's and the system's own: nothing of this project to check in them
    "export": lambda args: None,
    "curl": lambda args: None,
    "cd": lambda args: None,
}


@pytest.mark.parametrize("block", _blocks("sh", "console"))
def test_every_documented_command_parses(block: Block) -> None:
    commands = _commands(block)
    assert commands, f"{block.where}: no command in it"
    for words in commands:
        program = words[0].removeprefix(".venv/bin/")
        check = _PROGRAMS.get(program)
        assert check is not None, f"{block.where}: {program!r} is not a documented program"
        problem = check(words[1:])
        assert problem is None, f"{block.where}: {shlex.join(words)}: {problem}"


@pytest.mark.parametrize("block", _blocks("console", kind="exact"))
def test_every_exact_console_example_prints_what_it_shows(block: Block) -> None:
    shown: list[str] = []
    ran: list[str] = []
    for line in block.body.rstrip("\n").split("\n"):
        if not line.startswith("$ "):
            shown.append(line)
            continue
        words = shlex.split(line[2:], comments=True)
        assert words[0] == "resilience", f"{block.where}: only resilience commands run exactly"
        done = subprocess.run(
            [sys.executable, "-m", "resilience", *words[1:]],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        ran.extend((done.stdout + done.stderr).rstrip("\n").split("\n"))
    assert ran == shown, f"{block.where}: the commands print\n" + "\n".join(ran)


# -- generated tables and the step pages ---------------------------------------------------------


@pytest.mark.parametrize(
    "page",
    [p for p in DOCS if "<!-- params:" in p.read_text() or "<!-- telemetry:" in p.read_text()],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_generated_tables_match_the_code(page: Path) -> None:
    text = page.read_text()
    host = PluginHost(allow=["trending"])  # the example plugin's README documents its tier
    assert text == render_parameter_tables(text, host), (
        f"{page.relative_to(ROOT)} drifted from the models: run "
        f"python -m resilience._reference {page.relative_to(ROOT)}"
    )


@pytest.mark.parametrize("name", PluginHost(entry_points_=[]).names())
def test_every_builtin_step_has_a_page_with_the_common_outline(name: str) -> None:
    page = ROOT / "docs" / "steps" / f"{name}.md"
    assert page.is_file(), f"no docs/steps/{name}.md"
    text = page.read_text()
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings == STEP_OUTLINE, f"docs/steps/{name}.md: sections {headings}"
    assert f"<!-- params:{name} -->" in text
    assert f"<!-- telemetry:{name} -->" in text
    assert f"steps/{name}.md" in (ROOT / "docs" / "README.md").read_text(), "not in the index"


def test_every_name_a_step_module_registers_is_in_its_telemetry() -> None:
    from resilience.testing.contract import unlisted_telemetry

    host = PluginHost(entry_points_=[])
    for name, step_type in host.step_types.items():
        assert unlisted_telemetry(step_type, host) == [], name
        for item in step_type.telemetry:
            assert item in EVENTS or item in METRICS, f"{name}.telemetry: {item!r} unregistered"


# -- the checks themselves refuse what is wrong ------------------------------------------------


def _block(info: str, body: str) -> Block:
    words = info.split()
    return Block(ROOT / "docs" / "README.md", 1, words[0], tuple(words[1:]), body)


@pytest.mark.parametrize(
    "line",
    [
        "resilience validat policies.yaml",
        "resilience simulate --sead 1",
        ".venv/bin/python -m benchmarks speeed",
        "python -m benchmarks profile --asynchronous",
        "make tests",
        "pip install 'search-resilience[otell]'",
        "python -m examples.search_service.load --rates 5",
        "rm -rf /",
    ],
)
def test_a_wrong_command_fails_the_check(line: str) -> None:
    with pytest.raises(AssertionError):
        test_every_documented_command_parses(_block("sh", line))


@pytest.mark.parametrize(
    ("info", "body"),
    [
        ("yaml policy", "chain: [session, stale_cach, unpersonalized]\n"),
        ("yaml policy", "budget: 30\n"),
        ("yaml fragment", "settings: {plugins: {allow: [trending]}, colour: red}\n"),
        ("yaml policy invalid", "budget: 25ms\n"),
    ],
)
def test_a_wrong_policy_example_fails_the_check(info: str, body: str, tmp_path: Path) -> None:
    with pytest.raises(AssertionError):
        test_every_policy_example_validates(_block(info, body), tmp_path)


def test_an_excerpt_that_drifted_fails_the_check() -> None:
    test_every_excerpt_is_found_in_its_file(
        _block("python excerpt=resilience/cli.py", "def _stand_in(key: str) -> None:\n")
    )
    with pytest.raises(pytest.fail.Exception):
        test_every_excerpt_is_found_in_its_file(
            _block("python excerpt=resilience/cli.py", "def _stand_in(key: str) -> int:\n")
        )


def test_unknown_metrics_and_events_fail_the_check() -> None:
    with pytest.raises(AssertionError):
        test_every_promql_example_parses_and_names_real_metrics(
            _block("promql", "rate(resilience_decisions_totl[5m])")
        )
    with pytest.raises(AssertionError):
        test_every_json_example_parses_and_names_real_events(
            _block("json", '{"event": "resilience.policy.relaoded"}')
        )


# -- links -----------------------------------------------------------------------------------------

_LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """The anchors a code host makes of a page's headings (GitHub's rule: lowercase, spaces to
    hyphens, punctuation but ``-`` and ``_`` dropped)."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_its_file_and_heading(page: Path) -> None:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    broken = []
    for match in _LINK.finditer(text):
        target = match.group("target")
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto: ...
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert not broken, f"{page.relative_to(ROOT)}:\n" + "\n".join(broken)


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_generated_table_has_both_markers(page: Path) -> None:
    # A damaged closing marker would make the table invisible to the drift check.
    from resilience._reference import _MARKER

    text = page.read_text()
    for kind in ("params", "telemetry"):
        opened = len(re.findall(rf"<!-- {kind}:[a-z0-9_]+ -->", text))
        paired = sum(1 for m in _MARKER.finditer(text) if m.group("kind") == kind)
        assert opened == paired, (
            f"{page.relative_to(ROOT)}: a {kind} table lacks its closing marker"
        )


@pytest.mark.parametrize(
    "markdown",
    [
        "~~~yaml policy\nbudget: 30\n~~~\n",
        "````yaml policy\nbudget: 30\n```\nstill inside\n````\n",
        "> ```yaml policy\n> budget: 30\n> ```\n",
        "1. a step\n\n   ```yaml policy\n   budget: 30\n   ```\n",
    ],
)
def test_every_fence_form_is_collected(markdown: str, tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(markdown)
    (block,) = blocks_of(page)
    assert (block.language, block.kind) == ("yaml", "policy")
    assert block.body.startswith("budget: 30\n")


def test_a_fence_that_never_closes_fails_the_page(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("text\n```yaml policy\nbudget: 30\n")
    with pytest.raises(UnclosedFenceError):
        blocks_of(page)
