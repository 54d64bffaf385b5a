"""Thin wrapper: same as `ganime benchmark train` (see src/ganime/bench/train.py and docs/performance.md).

    python benchmarks/bench_train.py --json [options]
"""

import sys

from ganime.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["benchmark", "train", *sys.argv[1:]]))
