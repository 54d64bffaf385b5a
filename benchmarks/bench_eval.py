"""Thin wrapper: same as `ganime benchmark eval` (see src/ganime/bench/eval.py and docs/performance.md).

    python benchmarks/bench_eval.py --json [options]
"""

import sys

from ganime.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["benchmark", "eval", *sys.argv[1:]]))
