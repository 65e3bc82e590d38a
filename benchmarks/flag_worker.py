"""A search process for the flag benchmarks and tests: ``python -m benchmarks.flag_worker PATH``.

Builds an engine from the policy file at ``PATH`` (its ``settings.flags`` says where flags come
from), then decides continuously and prints one JSON line each time what it sees changes: the
reason of its decisions, or whether the flag ``search`` is stale. Each line carries the wall
time it was seen at, so that another process on the same machine can measure propagation. It
stops when its standard input closes.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from resilience import Affinities, Engine, NullSink, RequestContext


def main(path: str) -> int:
    stores = {"profile_store": {"u1": Affinities({"books": 1.0})}.get}
    done = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()
        done.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    request = RequestContext(user_id="u1")
    with Engine.from_file(path, stores, events=NullSink()) as engine:
        seen: tuple[str, bool] | None = None
        print(json.dumps({"ready": True}), flush=True)
        while not done.is_set():
            reason = engine.decide(request).trace.reason.value
            stale = engine.flags.get("search").stale
            if (reason, stale) != seen:
                seen = (reason, stale)
                print(json.dumps({"t": time.time(), "reason": reason, "stale": stale}), flush=True)
            time.sleep(0.0005)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1]))
