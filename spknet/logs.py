"""Console and ``scores.txt`` output through :mod:`logging`.

Messages go to the ``speakernet`` logger: information to stdout as it is, warnings and errors to stderr with their
level in front (``WARNING: ...``). Under torch.distributed only rank 0 reports information; the other ranks still
report warnings and errors. ``scores.txt`` is a file handler of its own logger, on rank 0 only.
"""

import logging
import sys
from contextlib import contextmanager

log = logging.getLogger("speakernet")
scores = logging.getLogger("speakernet.scores")


class _BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


class _Note(logging.Formatter):
    """``WARNING: message`` on stderr; information as it is."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return f"{record.levelname}: {message}" if record.levelno >= logging.WARNING else message


def setup(main_process: bool = True) -> None:
    """Console handlers for this process (idempotent: a second call replaces the first's handlers)."""
    for handler in list(log.handlers):
        log.removeHandler(handler)
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(_BelowWarning())
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(_Note("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO if main_process else logging.WARNING)
    log.propagate = False
    scores.propagate = False          # scores.txt lines go to the file alone; the console gets its own line


@contextmanager
def scores_file(path: str | None):
    """Lines logged to :data:`scores` are appended to ``path`` (None: nowhere, as on ranks other than 0)."""
    handler = logging.FileHandler(path, mode="a", encoding="utf-8") if path else logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    scores.addHandler(handler)
    scores.setLevel(logging.INFO)
    try:
        yield scores
    finally:
        scores.removeHandler(handler)
        handler.close()
