"""The ``resilience`` command: validate and explain policy files, run the demo, read and set
flags (``resilience flags list|get|set|clear|history``), measure lift and run the simulator
(``resilience simulate``).

Exit codes: 0 success; 1 the policy file (or a plugin it admits, or a scenario) is invalid or
the command could not do its work; 2 usage errors.
Errors go to stderr as ``FILE:LINE:COL: path: what is wrong (how to fix it)``, never as a
traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel

from ._demo import run_demo
from ._durations import format_duration
from ._engine import Engine
from ._errors import PluginError, PolicyIssue, PolicyValidationError
from ._flags_cli import add_flags_command
from ._lift import main_lift
from ._plugins import PluginHost
from ._policy import PolicySet, StepSpec, load_policies_file, read_policy_file
from ._schema import policy_schema
from ._sources import SourceOptions
from ._steps import OFFLINE
from ._yaml import Path as KeyPath
from ._yaml import format_path, read_yaml
from .events import NullSink

__all__ = ["main"]

DEFAULT_PATH = "policies.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    try:
        result: int = args.run(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`resilience explain | head`): stop quietly, as cat does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resilience",
        description="Declarative degradation policies for search personalization.",
    )
    from . import FORMAT_VERSION, __version__  # noqa: PLC0415 - the package imports this module
    from .hookspecs import API_VERSION  # noqa: PLC0415

    parser.add_argument(
        "--version",
        action="version",
        version=f"search-resilience {__version__} (policy format {FORMAT_VERSION}, "
        f"plugin API {API_VERSION})",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    validate = commands.add_parser(
        "validate", help="check a policy file; exit 0 when valid, 1 with every error when not"
    )
    validate.add_argument("path", nargs="?", default=DEFAULT_PATH, help="default: %(default)s")
    validate.add_argument("--format", choices=("text", "json"), default="text")
    validate.set_defaults(run=_validate)

    explain = commands.add_parser(
        "explain", help="show each policy's steps in execution order with every parameter"
    )
    explain.add_argument("path", nargs="?", default=DEFAULT_PATH, help="default: %(default)s")
    explain.add_argument("--policy", help="show only this policy")
    explain.add_argument("--format", choices=("text", "json"), default="text")
    explain.set_defaults(run=_explain)

    schema = commands.add_parser(
        "schema",
        help="print a JSON Schema of the policy file, with the steps of every installed plugin, "
        "for editors (# yaml-language-server: $schema=...)",
    )
    schema.add_argument(
        "--output", "-o", type=Path, help="write it to this file instead of standard output"
    )
    schema.set_defaults(run=_schema)

    demo = commands.add_parser(
        "demo",
        help="send requests through a policy file with healthy, failing and hanging "
        "in-memory stores, and print each decision trace",
    )
    demo.add_argument("path", nargs="?", default=DEFAULT_PATH, help="default: %(default)s")
    demo.set_defaults(run=_demo)
    add_flags_command(commands, DEFAULT_PATH)

    lift = commands.add_parser(
        "lift",
        help="CTR per holdout group and the lift of personalization, with a 95%% interval, "
        "from an exposure log and a click log",
    )
    lift.add_argument("exposures", help="JSON Lines of exposure records")
    lift.add_argument("clicks", help="JSON Lines of click records")
    lift.add_argument("--json", action="store_true", help="print the report as JSON")
    lift.set_defaults(run=_lift)
    _simulate_parser(commands)
    return parser


def _simulate_parser(commands: Any) -> None:
    simulate = commands.add_parser(
        "simulate",
        help="run a synthetic world through the engine on a virtual clock, under a scenario "
        "of faults and operations; print a summary per phase",
    )
    simulate.add_argument(
        "--scenario",
        default="default",
        metavar="NAME|PATH",
        help="a built-in scenario or a YAML file (default: %(default)s; --list shows them)",
    )
    simulate.add_argument(
        "--policies",
        metavar="PATH",
        help="the policy file to run (default: the simulation's own, the reference policy "
        "with a stream_lag guard and a holdout)",
    )
    simulate.add_argument("--seed", type=int, default=1, help="default: %(default)s")
    simulate.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply users, search rate and new users (same timeline); default: %(default)s",
    )
    simulate.add_argument("--json", metavar="PATH", help="write the result as JSON")
    simulate.add_argument("--report", metavar="DIR", help="write an HTML report to DIR/index.html")
    simulate.add_argument(
        "--redis",
        metavar="URL",
        help="read sessions from the Redis at URL (redis://host:port/db) through a loopback "
        "fault proxy, on a clock of real time plus skipped time; writes only keys of its own "
        "and deletes them at the end",
    )
    password = simulate.add_mutually_exclusive_group()
    password.add_argument(
        "--redis-password-env",
        metavar="NAME",
        help="the environment variable holding the password of --redis (keeps it off the "
        "command line, which ps shows)",
    )
    password.add_argument("--redis-password-file", metavar="PATH", help="or the file holding it")
    simulate.add_argument("--quiet", action="store_true", help="no progress bar")
    simulate.add_argument(
        "--list", action="store_true", help="list the built-in scenarios and exit"
    )
    simulate.set_defaults(run=_simulate)


def _load(path: str, fmt: str = "text", *, build: bool = False) -> PolicySet | int:
    try:
        loaded = load_policies_file(path)
        if build:
            # Wiring across steps is checked when an engine is built; build one on stand-in
            # sources so that CI sees those errors too. Real sources are bound by the service.
            stand_ins = dict.fromkeys(loaded.source_names(), _stand_in)
            offline = OFFLINE.set(True)  # steps connect to nothing, read no secret
            try:
                Engine(_offline(loaded), stand_ins, events=NullSink(), flag_feeds=()).close()
            finally:
                OFFLINE.reset(offline)
        return loaded
    except PolicyValidationError as exc:
        if fmt == "json":
            json.dump(
                {"valid": False, "issues": [i.as_dict() for i in exc.issues]}, sys.stdout, indent=2
            )
            sys.stdout.write("\n")
        _report(path, exc)
        return 1
    except PluginError as exc:
        if fmt == "json":
            json.dump(
                {
                    "valid": False,
                    "issues": [
                        {
                            "file": path,
                            "line": 0,
                            "column": 0,
                            "path": "settings.plugins",
                            "message": str(exc),
                            "hint": "",
                        }
                    ],
                },
                sys.stdout,
                indent=2,
            )
            sys.stdout.write("\n")
        print(f"{path}: {exc}", file=sys.stderr)
        return 1


def _offline(policies: PolicySet) -> PolicySet:
    """``policies`` for a run of the command line that connects to nothing: no exposure log
    (validating a file must not create one, nor need its salt, which CI does not have), and
    sources declared with ``redis:`` taken as plain ones, bound to stand-ins like the rest (CI
    has no Redis; the connection settings were validated when the file was read)."""
    _redis_extra_for(policies)
    sources = {name: _offline_source(options) for name, options in policies.sources.items()}
    settings = policies.settings.model_copy(update={"exposures": None})
    return dataclasses.replace(policies, settings=settings, sources=sources)


def _redis_extra_for(policies: PolicySet) -> None:
    """Refuse Redis declarations without the client library: offline, nothing else would
    import it, and the service's start-up would be the first to find out."""
    declared: list[KeyPath] = []
    for name, options in policies.sources.items():
        if options.redis is not None:
            declared.append(("sources", name, "redis"))
        if options.breaker is not None and options.breaker.fleet is not None:
            declared.append(("sources", name, "breaker", "fleet"))
    if policies.settings.flags.redis is not None:
        declared.append(("settings", "flags", "redis"))
    if not declared:
        return
    try:
        import redis  # noqa: F401, PLC0415 - only whether it is installed
    except ImportError:
        message = "needs the redis extra, which is not installed"
        hint = "pip install 'search-resilience[redis]'"
        raise PolicyValidationError(
            PolicyIssue(policies.file, line, column, format_path(path), message, hint)
            for path, (line, column) in _positions(policies, declared)
        ) from None


def _positions(policies: PolicySet, paths: list[KeyPath]) -> list[tuple[KeyPath, tuple[int, int]]]:
    """Each path with its line and column in the file (0, 0 when it cannot be read again)."""
    try:
        located, _ = read_yaml(read_policy_file(policies.file), policies.file)
    except PolicyValidationError:  # gone since it was loaded: no lines, the message stands
        located = None
    return [(path, located.position(path) if located else (0, 0)) for path in paths]


def _offline_source(options: SourceOptions) -> SourceOptions:
    # A breaker shared across the fleet is local here: its Redis was validated with the file,
    # and a CI job has neither that Redis nor the variable naming it.
    if options.redis is not None:
        options = options.model_copy(update={"redis": None})
    breaker = options.breaker
    if breaker is not None and breaker.fleet is not None:
        options = options.model_copy(update={"breaker": breaker.model_copy(update={"fleet": None})})
    return options


def _stand_in(key: str) -> None:
    return None


def _report(path: str, exc: PolicyValidationError) -> None:
    for issue in exc.issues:
        print(issue, file=sys.stderr)
    count = len(exc.issues)
    print(f"{path}: {count} problem{'s' if count != 1 else ''}", file=sys.stderr)


def _settings_warnings(loaded: PolicySet) -> list[PolicyIssue]:
    """The advice of the options under ``settings`` and ``sources`` (a Redis password in a
    URL, the exposure log's salt in the file), each at the line of the key it is about
    (``ADVICE_AT``). The loader asks only steps' parameters for advice; a Redis inside a
    step's parameters (the stream_lag guard's) is in ``loaded.warnings`` already."""
    found: list[tuple[KeyPath, str]] = []

    def walk(value: object, path: KeyPath) -> None:
        advice = getattr(value, "advice", None)
        key = getattr(type(value), "ADVICE_AT", None)
        if isinstance(value, BaseModel) and callable(advice) and isinstance(key, str):
            found.extend(((*path, key), message) for message in advice())
        if isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name), (*path, name))
        elif isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, (*path, str(key)))

    walk(loaded.settings, ("settings",))
    walk(loaded.sources, ("sources",))
    positions = _positions(loaded, [path for path, _ in found])
    return [
        PolicyIssue(loaded.file, line, column, format_path(path[:-1]), message)
        for (path, (line, column)), (_, message) in zip(positions, found, strict=True)
    ]


def _validate(args: argparse.Namespace) -> int:
    loaded = _load(args.path, args.format, build=True)
    if isinstance(loaded, int):
        return loaded
    warnings = [*loaded.warnings, *_settings_warnings(loaded)]
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.format == "json":
        json.dump(
            {
                "valid": True,
                "file": args.path,
                "version": loaded.version,
                "policies": {n: p.version for n, p in loaded.policies.items()},
                "warnings": [w.as_dict() for w in warnings],
            },
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
    else:
        names = ", ".join(loaded.policies)
        print(
            f"{args.path}: valid ({len(loaded.policies)} polic"
            f"{'ies' if len(loaded.policies) != 1 else 'y'}: {names})"
        )
    return 0


def _schema(args: argparse.Namespace) -> int:
    try:
        # Every installed plugin, allowed or not: an editor should know any step a policy
        # file may name; whether it may load is the file's own settings.plugins.allow.
        host = PluginHost(allow=None)
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(policy_schema(host), indent=2, sort_keys=False) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _explain(args: argparse.Namespace) -> int:
    loaded = _load(args.path)
    if isinstance(loaded, int):
        return loaded
    names = list(loaded.policies)
    if args.policy is not None:
        if args.policy not in loaded.policies:
            print(
                f"{args.path}: no policy named {args.policy!r} (known: {', '.join(names)})",
                file=sys.stderr,
            )
            return 1
        names = [args.policy]
    if args.format == "json":
        out = {
            n: {
                "config_version": loaded.policies[n].version,
                **loaded.policies[n].normalized(loaded.sources),
            }
            for n in names
        }
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    _explain_text(loaded, names, sys.stdout)
    return 0


def _explain_text(loaded: PolicySet, names: list[str], out: TextIO) -> None:
    default = loaded.default_policy or "(none)"
    out.write(f"{loaded.file}: file version {loaded.version}, default policy: {default}\n")
    for name in names:
        policy = loaded.policies[name]
        out.write(
            f"\npolicy {name} [config {policy.version}] budget {format_duration(policy.budget)}\n"
        )
        if policy.description:
            out.write(f"  {policy.description}\n")
        step_no = 0
        for section, steps in (
            ("guards", policy.guards),
            ("chain", policy.chain),
            ("post", policy.post),
        ):
            if not steps:
                out.write(f"  {section}: (none)\n")
                continue
            out.write(f"  {section}:\n")
            for spec in steps:
                step_no += 1
                out.write(f"    {step_no}. {_describe(spec, loaded)}\n")
                for key, value in spec.params.model_dump(mode="json").items():
                    out.write(f"         {key}: {_show(value)}\n")


def _describe(spec: StepSpec, loaded: PolicySet) -> str:
    origin = loaded.plugins.origin(spec.type.name)
    terminal = ", terminal" if getattr(spec.type, "terminal", False) else ""
    return f"{spec.step_id} (type {spec.type.name}, plugin {origin}{terminal})"


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _lift(args: argparse.Namespace) -> int:
    return main_lift(args.exposures, args.clicks, args.json, sys.stdout, sys.stderr)


class _ProgressBar:
    """A one-line progress bar on a terminal (stderr): virtual time done and decisions."""

    WIDTH = 30

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._shown = -1

    def __call__(self, done: float, decisions: int) -> None:
        filled = int(done * self.WIDTH)
        percent = int(done * 100)
        if percent == self._shown:
            return
        self._shown = percent
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self._out.write(f"\r[{bar}] {percent:3d}%  {decisions:,} decisions")
        self._out.flush()

    def close(self) -> None:
        if self._shown >= 0:
            self._out.write("\r" + " " * (self.WIDTH + 40) + "\r")
            self._out.flush()


def _simulate(args: argparse.Namespace) -> int:
    from .simulation import (  # noqa: PLC0415 - only this command needs it
        ScenarioError,
        SimulationError,
        builtin_scenarios,
        format_summary,
        simulate,
    )

    if args.list:
        for name, description in builtin_scenarios().items():
            print(f"{name:<12} {description}")
        return 0
    if args.redis is None and (args.redis_password_env or args.redis_password_file):
        print("error: a Redis password is given, but no --redis URL", file=sys.stderr)
        return 2
    bar = None if args.quiet or not sys.stderr.isatty() else _ProgressBar(sys.stderr)
    try:
        result = simulate(
            args.scenario,
            policies=args.policies,
            seed=args.seed,
            scale=args.scale,
            progress=bar,
            redis=args.redis,
            redis_password_env=args.redis_password_env,
            redis_password_file=args.redis_password_file,
        )
    except ScenarioError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        count = len(exc.issues)
        print(f"{args.scenario}: {count} problem{'s' if count != 1 else ''}", file=sys.stderr)
        return 1
    except PolicyValidationError as exc:
        _report(args.policies or "policies.yaml", exc)
        return 1
    except (SimulationError, PluginError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if bar is not None:
            bar.close()
    sys.stdout.write(format_summary(result))
    wire = result.get("redis")
    if wire is not None:
        print(
            f"session store: Redis at {wire['url']} through a fault proxy; "
            f"{wire['sessions_written']:,} sessions written under {wire['key_prefix']}, "
            f"{wire['keys_deleted']:,} keys deleted; {wire['real_s']:.1f}s real, "
            f"{wire['skipped_s']:.1f}s skipped"
        )
    if args.json:
        try:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(result, fh, indent=2, allow_nan=False)
                fh.write("\n")
        except OSError as exc:
            print(f"error: {args.json}: cannot write ({exc.strerror or exc})", file=sys.stderr)
            return 1
        print(f"result written to {args.json}")
    if args.report:
        return _write_report(result, args.report)
    return 0


def _write_report(result: dict[str, Any], directory: str) -> int:
    import importlib  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    try:
        module = importlib.import_module("resilience.simulation._report")
    except ModuleNotFoundError as exc:
        if exc.name != "resilience.simulation._report":
            raise
        print("error: the HTML report is not available in this installation", file=sys.stderr)
        return 1
    render_report: Callable[[Mapping[str, Any], Path], Path] = module.render_report
    try:
        path = render_report(result, Path(directory))
    except OSError as exc:
        print(
            f"error: {directory}: cannot write the report ({exc.strerror or exc})", file=sys.stderr
        )
        return 1
    print(f"report written to {path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    loaded = _load(args.path)
    if isinstance(loaded, int):
        return loaded
    try:
        return run_demo(_offline(loaded), sys.stdout)
    except PolicyValidationError as exc:  # unbound sources or wiring, found at engine build
        _report(args.path, exc)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
