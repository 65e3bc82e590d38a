"""``resilience flags``: the operator's view of kill switches and flags.

``list`` and ``get`` read every source the policy file declares (the environment of this shell,
the flags file, the fleet's Redis) and show the value each flag would take in a process started
now, and where it comes from. ``set`` and ``clear`` write to the fleet's Redis (or, with
``--to file``, the flags file), with a reason that goes into the audit trail.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import sys
import threading
import time
from typing import Any

from ._errors import PolicyValidationError
from ._flag_feed import FlagRecord
from ._flags import PRECEDENCE, FlagError, Flags, FlagState, flag_specs, make_feeds
from ._policy import PolicySet, beside_policy, load_policies_file
from .events import NullSink

__all__ = ["add_flags_command"]


def add_flags_command(commands: Any, default_path: str) -> None:
    """Add ``flags`` and its subcommands to the CLI's subparsers."""
    flags = commands.add_parser("flags", help="list, read and set kill switches and flags")
    sub = flags.add_subparsers(title="flag commands", metavar="ACTION")

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--policies",
            default=default_path,
            help="the policy file that declares the flags and their sources (default: %(default)s)",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=2.0,
            help="seconds to wait for Redis (default: %(default)s; the policy's own timeout is "
            "for services, this one for an operator's connection)",
        )

    listing = sub.add_parser("list", help="every flag, its value and where it comes from")
    common(listing)
    listing.add_argument("--format", choices=("text", "json"), default="text")
    listing.set_defaults(run=_list)

    get = sub.add_parser("get", help="one flag, with what each source holds for it")
    get.add_argument("key", help="<policy> or <policy>.<step id>")
    common(get)
    get.add_argument("--format", choices=("text", "json"), default="text")
    get.set_defaults(run=_get)

    for name, helptext in (
        ("set", "set a flag for the fleet (or in the flags file)"),
        ("clear", "remove a flag; the next source, or the policy's mode, decides again"),
    ):
        parser = sub.add_parser(name, help=helptext)
        parser.add_argument("key", help="<policy> or <policy>.<step id>")
        if name == "set":
            parser.add_argument("value", help="on, off or shadow")
        parser.add_argument("--reason", required=True, help="why: goes into the audit trail")
        parser.add_argument("--by", default=None, help="who (default: the current user)")
        parser.add_argument(
            "--to",
            choices=("redis", "file"),
            default=None,
            help="where to write (default: redis if settings.flags declares it, else the file)",
        )
        common(parser)
        parser.set_defaults(run=_set if name == "set" else _clear)

    history = sub.add_parser("history", help="the newest changes made through Redis")
    common(history)
    history.add_argument("--limit", type=int, default=20)
    history.set_defaults(run=_history)
    flags.set_defaults(run=lambda args: _usage(flags))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _load(path: str, timeout: float = 2.0) -> PolicySet | None:
    try:
        policies = load_policies_file(path)
    except PolicyValidationError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"{path}: invalid; fix it before using its flags", file=sys.stderr)
        return None
    redis = policies.settings.flags.redis
    if redis is None:
        return policies
    # The operator's connection gets its own timeout: a laptop is farther from Redis than a
    # service is.
    flags = policies.settings.flags.model_copy(
        update={"redis": redis.model_copy(update={"timeout": timeout})}
    )
    settings = policies.settings.model_copy(update={"flags": flags})
    return dataclasses.replace(policies, settings=settings)


def _board(policies: PolicySet) -> Flags | None:
    """The flags as a process started now would see them (OpenFeature aside: its provider
    lives in the application)."""
    board = Flags(flag_specs(policies), NullSink(), time.time, lambda: None, threading.RLock())
    settings = policies.settings.flags.model_copy(update={"openfeature": None})
    try:
        feeds = make_feeds(settings, policies.file)
    except PolicyValidationError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return None
    board.start(feeds)
    board.stop()
    return board


def _row(state: FlagState) -> dict[str, Any]:
    return {
        "key": state.key,
        "value": state.value.value,
        "source": state.source,
        "default": state.default.value,
        "stale": state.stale,
        "reason": state.reason,
        "by": state.by,
        "at": state.at,
    }


def _list(args: argparse.Namespace) -> int:
    policies = _load(args.policies, args.timeout)
    board = _board(policies) if policies is not None else None
    if board is None:
        return 1
    states = board.states()
    health = board.sources()
    if args.format == "json":
        json.dump(
            {
                "flags": [_row(s) for s in states],
                "sources": [h._asdict() for h in health],
            },
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
        return 0
    width = max((len(s.key) for s in states), default=4)
    for state in states:
        marks = " (stale)" if state.stale else ""
        note = f"  {state.reason}" if state.reason else ""
        by = f" [{state.by}]" if state.by else ""
        print(
            f"{state.key:<{width}}  {state.value.value:<6} from {state.source}{marks}"
            f"  default {state.default.value}{by}{note}"
        )
    for source in health:
        if not source.healthy:
            print(f"warning: {source.source} unreadable: {source.error}", file=sys.stderr)
    return 0


def _get(args: argparse.Namespace) -> int:
    policies = _load(args.policies, args.timeout)
    board = _board(policies) if policies is not None else None
    if board is None:
        return 1
    try:
        state = board.get(args.key)
    except FlagError as exc:
        print(f"{args.policies}: {exc}", file=sys.stderr)
        return 1
    held = board.held(args.key)
    if args.format == "json":
        json.dump(
            {**_row(state), "held": {n: r._asdict() for n, r in held.items()}},
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
        return 0
    stale = ", stale" if state.stale else ""
    print(f"{state.key}: {state.value.value} (from {state.source}{stale})")
    print(f"  declared in the policy: {state.default.value}")
    for name, record in held.items():
        print(f"  {name}: {_describe(record)}")
    return 0


def _describe(record: FlagRecord) -> str:
    parts = [record.value]
    if record.by:
        parts.append(f"by {record.by}")
    if record.at:
        parts.append(time.strftime("at %Y-%m-%d %H:%M:%S UTC", time.gmtime(record.at)))
    if record.reason:
        parts.append(f"({record.reason})")
    return " ".join(parts)


def _set(args: argparse.Namespace) -> int:
    return _write(args, args.value)


def _clear(args: argparse.Namespace) -> int:
    return _write(args, None)


def _write(args: argparse.Namespace, value: str | None) -> int:
    policies = _load(args.policies, args.timeout)
    if policies is None:
        return 1
    board = _board(policies)
    if board is None:
        return 1
    try:
        if value is not None:
            mode = board.check(args.key, value)
            value = mode.value
        else:
            board.get(args.key)
    except FlagError as exc:
        print(f"{args.policies}: {exc}", file=sys.stderr)
        return 1
    if not args.reason.strip():
        print("--reason must say why (it goes into the audit trail)", file=sys.stderr)
        return 2
    by = args.by or _user()
    settings = policies.settings.flags
    target = args.to or ("redis" if settings.redis is not None else "file")
    before = board.get(args.key)
    if target == "redis":
        if settings.redis is None:
            print(
                f"{args.policies}: settings.flags declares no redis: nowhere to write for the "
                "fleet (declare settings.flags.redis, or use --to file)",
                file=sys.stderr,
            )
            return 1
        from ._flags_redis import FlagStoreError, RedisFlagStore  # noqa: PLC0415 - redis extra

        try:
            store = RedisFlagStore(settings.redis)
        except (ValueError, ImportError) as exc:
            print(f"{args.policies}: settings.flags.redis: {exc}", file=sys.stderr)
            return 1
        try:
            if value is None:
                version = store.clear(args.key, reason=args.reason, by=by)
            else:
                version = store.set(args.key, value, reason=args.reason, by=by)
        except FlagStoreError as exc:
            print(f"{args.key}: not changed: {exc}", file=sys.stderr)
            return 1
        finally:
            store.close()
        where = f"redis (version {version})"
    else:
        if settings.file is None:
            print(
                f"{args.policies}: settings.flags declares no file: nowhere to write "
                "(declare settings.flags.file, or settings.flags.redis for a fleet)",
                file=sys.stderr,
            )
            return 1
        from ._flags_file import write_flag_file  # noqa: PLC0415

        path = _flags_path(policies)
        try:
            write_flag_file(path, args.key, value, reason=args.reason, by=by)
        except OSError as exc:
            print(f"{path}: not changed: {exc.strerror or exc}", file=sys.stderr)
            return 1
        where = f"file {path}"
    after_board = _board(policies)
    after = after_board.get(args.key) if after_board is not None else before
    print(
        f"{args.key}: {before.value.value} -> {after.value.value} "
        f"(wrote {value or 'cleared'} to {where}, by {by}: {args.reason})"
    )
    outranks = after.source in PRECEDENCE and PRECEDENCE.index(after.source) < PRECEDENCE.index(
        target
    )
    rank = PRECEDENCE.index(target)
    for source in after_board.sources() if after_board is not None else []:
        if not source.healthy and PRECEDENCE.index(source.source) < rank:
            print(
                f"warning: {source.source} could not be read ({source.error}); running "
                f"processes keep its last values, which outrank {target}: if it holds "
                f"{args.key}, this change takes effect only where it is cleared there",
                file=sys.stderr,
            )
    if outranks and (value is None or after.value.value != value):
        print(
            f"warning: {after.source} holds {after.value.value!r} for {args.key} and takes "
            f"precedence over {target}",
            file=sys.stderr,
        )
    return 0


def _flags_path(policies: PolicySet) -> str:
    assert policies.settings.flags.file is not None
    return beside_policy(policies.file, policies.settings.flags.file)


def _history(args: argparse.Namespace) -> int:
    policies = _load(args.policies, args.timeout)
    if policies is None:
        return 1
    settings = policies.settings.flags
    if settings.redis is None:
        print(f"{args.policies}: settings.flags declares no redis: no history", file=sys.stderr)
        return 1
    from ._flags_redis import FlagStoreError, RedisFlagStore  # noqa: PLC0415

    try:
        store = RedisFlagStore(settings.redis)
        try:
            entries = store.history(args.limit)
        finally:
            store.close()
    except (ValueError, FlagStoreError) as exc:
        print(f"{args.policies}: {exc}", file=sys.stderr)
        return 1
    for entry in entries:
        at = float(entry.get("at") or 0)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) if at else "?"
        print(
            f"{when}  {entry.get('key')}: {entry.get('old') or '-'} -> "
            f"{entry.get('new') or '(cleared)'}  by {entry.get('by')}: {entry.get('reason')}"
        )
    return 0


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (a container without one)
        return "unknown"
