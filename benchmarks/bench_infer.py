"""Thin wrapper: same as `ganime benchmark infer` (see src/ganime/bench/infer.py and docs/performance.md).

    python benchmarks/bench_infer.py --json [options]
"""

import sys

from ganime.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["benchmark", "infer", *sys.argv[1:]]))
