"""Thin wrapper: same as `ganime benchmark data` (see src/ganime/bench/data.py and docs/performance.md).

    python benchmarks/bench_data.py --json [options]
"""

import sys

from ganime.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["benchmark", "data", *sys.argv[1:]]))
