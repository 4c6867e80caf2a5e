"""Every benchmark, at the sizes the README reports: `make bench` (or `python -m bench.run`).

Each prints its ratios against the reference measured in the same run and writes its
figures to bench/out/*.json. The 10M-row features run takes a few minutes.
"""

from __future__ import annotations

import logging

from bench import clv, features


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    features.main(["--sizes", "1e6,1e7"])
    clv.main(["--customers", "1000000"])


if __name__ == "__main__":
    main()
