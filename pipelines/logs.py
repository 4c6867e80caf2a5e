"""How every `cvp` command logs: one line per record on stderr, time, level and logger; the
chattiest libraries at WARNING. Only the standard library: the warm server's launcher uses it too."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"
QUIET_LOGGERS = ("alembic", "mlflow.store", "urllib3", "matplotlib", "numexpr", "py4j")


def configure(verbose: bool = False) -> None:
    """INFO (DEBUG when ``verbose``) on stderr, unless logging is already set up in this process."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=FORMAT, datefmt=DATE_FORMAT)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
