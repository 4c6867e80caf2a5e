"""The benchmark: `make bench` (or `python -m bench.run`), one command.

Runs bench.pipeline at 1M and 10M transactions: (a) the whole pipeline, `dvc repro` on DuckDB,
(b) the plain lifetimes route, (c) the features stage on Spark local[2]; prints wall time, peak
memory and the ratios against (b), and writes bench/results.json with the targets and whether
each passes. Every argument goes to bench.pipeline, e.g. the out-of-core route:

    python -m bench.run --sizes 1e8 --features-only        # make bench BENCH_ARGS="--sizes 1e8 --features-only"

``--with-components`` also runs the component benchmarks, bench.features (features stage vs
lifetimes' summary util, bench/out/features.json) and bench.clv (CLV fits vs plain lifetimes,
bench/out/clv.json).
"""

from __future__ import annotations

import logging
import sys

from bench import clv, features, pipeline


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    argv = list(sys.argv[1:] if argv is None else argv)
    components = "--with-components" in argv
    argv = [a for a in argv if a != "--with-components"]
    pipeline.main(argv)
    if components:
        features.main(["--sizes", "1e6,1e7"])
        clv.main(["--customers", "1000000"])


if __name__ == "__main__":
    main()
