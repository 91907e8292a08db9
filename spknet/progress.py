"""Progress bars: live on a terminal; in a log file (a cluster job's output) at most one update every 30 s."""

import sys

from tqdm import tqdm

LOG_FILE_INTERVAL = 30.0    # seconds between updates when the output is not a terminal


def progress_bar(iterable=None, enabled: bool = True, **options) -> tqdm:
    """A tqdm bar on stdout; redirected output gets ``LOG_FILE_INTERVAL`` between updates instead of one per step."""
    stream = options.pop("file", sys.stdout)
    interactive = hasattr(stream, "isatty") and stream.isatty()
    if not interactive:
        options.setdefault("mininterval", LOG_FILE_INTERVAL)
        options.setdefault("maxinterval", LOG_FILE_INTERVAL)
    return tqdm(iterable, disable=not enabled, file=stream, dynamic_ncols=interactive, **options)
