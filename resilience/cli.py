"""The ``resilience`` command: validate and explain policy files, run the demo, and read and set
flags (``resilience flags list|get|set|clear|history``).

Exit codes: 0 success; 1 the policy file (or a plugin it admits) is invalid; 2 usage errors.
Errors go to stderr as ``FILE:LINE:COL: path: what is wrong (how to fix it)``, never as a
traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from ._demo import run_demo
from ._durations import format_duration
from ._engine import Engine
from ._errors import PluginError, PolicyValidationError
from ._flags_cli import add_flags_command
from ._lift import main_lift
from ._policy import PolicySet, StepSpec, load_policies_file
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
    return parser


def _load(path: str, fmt: str = "text", *, build: bool = False) -> PolicySet | int:
    try:
        loaded = load_policies_file(path)
        if build:
            # Wiring across steps is checked when an engine is built; build one on stand-in
            # sources so that CI sees those errors too. Real sources are bound by the service.
            stand_ins = dict.fromkeys(loaded.source_names(), _stand_in)
            Engine(_offline(loaded), stand_ins, events=NullSink()).close()
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
    """``policies`` for a run of the command line: no exposure log (validating a file must not
    create one, nor need its salt, which CI does not have)."""
    if policies.settings.exposures is None:
        return policies
    settings = policies.settings.model_copy(update={"exposures": None})
    return dataclasses.replace(policies, settings=settings)


def _stand_in(key: str) -> None:
    return None


def _report(path: str, exc: PolicyValidationError) -> None:
    for issue in exc.issues:
        print(issue, file=sys.stderr)
    count = len(exc.issues)
    print(f"{path}: {count} problem{'s' if count != 1 else ''}", file=sys.stderr)


def _validate(args: argparse.Namespace) -> int:
    loaded = _load(args.path, args.format, build=True)
    if isinstance(loaded, int):
        return loaded
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.format == "json":
        json.dump(
            {
                "valid": True,
                "file": args.path,
                "version": loaded.version,
                "policies": {n: p.version for n, p in loaded.policies.items()},
                "warnings": [w.as_dict() for w in loaded.warnings],
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
