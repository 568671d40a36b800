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


def _enabled_by_application() -> bool:
    """Whether the application called `logger.enable("actor_orch")` before importing us.

    loguru offers no public query for this; its activation list is read defensively, and on
    any surprise the library stays silent as a library should.
    """
    try:
        activation = logger._core.activation_list  # type: ignore[attr-defined]
        return any(name == "actor_orch." and bool(on) for name, on in activation)
    except (AttributeError, TypeError, ValueError):
        return False


def install() -> None:
    """Disable our loguru logger (unless the application enabled it already) and bridge
    Pykka's stdlib logs (idempotent)."""
    if not _enabled_by_application():
        logger.disable("actor_orch")
    pykka_logger = logging.getLogger("pykka")
    if not any(isinstance(h, _PykkaToLoguru) for h in pykka_logger.handlers):
        pykka_logger.addHandler(_PykkaToLoguru())
