"""``python -m benchmarks [--quick] [--json PATH]``."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from . import happy_path


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer calls and repeats")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = {
        "python": platform.python_version(),
        "quick": args.quick,
        "happy_path": happy_path.run(quick=args.quick),
    }
    for mode, figures in results["happy_path"].items():
        print(
            f"happy_path.{mode}: engine {figures['subject_ns'] / 1000:.2f} us, "
            f"hand-written {figures['baseline_ns'] / 1000:.2f} us, "
            f"ratio {figures['ratio']:.2f} (median of {figures['repeats']} interleaved repeats)"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


sys.exit(main())
