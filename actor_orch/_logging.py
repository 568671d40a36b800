"""Library-style logging: loguru, silent until the application opts in.

`import actor_orch` disables the `actor_orch` loguru logger; an application turns it on with
`logger.enable("actor_orch")`. Pykka logs through the stdlib `logging` module; its records are
forwarded into loguru under this package, so they appear exactly when ours do.
"""

from __future__ import annotations

import logging

from loguru import logger

__all__ = ["install"]


class _PykkaToLoguru(logging.Handler):
    """Forwards stdlib records from the `pykka` logger into loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.bind(source="pykka").opt(exception=record.exc_info).log(
            level, "pykka: {}", record.getMessage()
        )


def install() -> None:
    """Disable our loguru logger and bridge Pykka's stdlib logs (idempotent)."""
    logger.disable("actor_orch")
    pykka_logger = logging.getLogger("pykka")
    if not any(isinstance(h, _PykkaToLoguru) for h in pykka_logger.handlers):
        pykka_logger.addHandler(_PykkaToLoguru())
