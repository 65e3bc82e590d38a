"""Where a decision's time goes: a pyinstrument profile of the happy path.

``python -m benchmarks profile [--async] [--post N] [--calls N]``: the happy path's engine
(``happy_path.policy_text()``), sync or asyncio, optionally with the reference post steps over
``N`` candidates, profiled over many decisions after a warm-up. Prints pyinstrument's call tree
(statistical sampling every 0.1 ms; its own overhead inflates every frame alike, so read the
shares, not the absolute seconds). The hand-written baseline is profiled with ``--baseline``,
to compare the trees.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable

from pyinstrument import Profiler

from resilience import Engine, NullSink, RequestContext, load_policies

from .happy_path import REQUEST, HandWritten, async_sources, policy_text, sync_sources
from .post_steps import request_with

__all__ = ["main", "profile"]


def profile(*, asynchronous: bool, post: int, calls: int, baseline: bool) -> str:
    """The call tree of ``calls`` decisions, as text."""
    request: RequestContext = request_with(post) if post else REQUEST
    sources = async_sources() if asynchronous else sync_sources()
    policies = load_policies(policy_text(post=bool(post)))
    with Engine(policies, sources, events=NullSink(), seed=1) as engine:
        subject = HandWritten(engine.config_version()) if baseline else engine
        loop = asyncio.new_event_loop()

        def run(count: int) -> None:
            if not asynchronous:
                decide: Callable[[RequestContext], object] = subject.decide
                for _ in range(count):
                    decide(request)
                return

            async def many() -> None:
                for n in range(count):
                    await subject.adecide(request)
                    if n % 64 == 63:
                        await asyncio.sleep(0)  # as happy_path.async_loop: keep the heap small

            loop.run_until_complete(many())

        try:
            run(max(calls // 20, 1))  # warm-up
            profiler = Profiler(interval=0.0001, async_mode="disabled")
            profiler.start()
            run(calls)
            profiler.stop()
        finally:
            loop.close()
    return profiler.output_text(unicode=True, color=False)


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks profile``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks profile")
    parser.add_argument("--async", dest="asynchronous", action="store_true", help="adecide")
    parser.add_argument("--post", type=int, default=0, help="post steps over N candidates")
    parser.add_argument("--calls", type=int, default=20_000, help="decisions profiled")
    parser.add_argument("--baseline", action="store_true", help="the hand-written code instead")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    print(
        profile(
            asynchronous=args.asynchronous,
            post=args.post,
            calls=args.calls,
            baseline=args.baseline,
        )
    )
    return 0
