"""Progress bars: every update on a terminal, at most one per 30 s when the output is a file.

The bars read a clock of the test's (tqdm's own ``time``), which moves only when the test moves it: what they
write does not depend on how fast the machine is.
"""

import io
import re

import pytest
import tqdm

from spknet.progress import LOG_FILE_INTERVAL, progress_bar
from tests.helpers import nan_trainer


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Clock:
    """tqdm's clock, moved by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(tqdm.std, "time", clock)
    monkeypatch.setattr(tqdm.tqdm, "monitor_interval", 0)      # no monitor thread refreshing on the real clock
    return clock


def updates(text: str) -> list[tuple[int, int]]:
    """(position, elapsed seconds) of each line of a bar."""
    return [(int(n), int(m) * 60 + int(s)) for n, m, s in re.findall(r"(\d+)/\d+ \[(\d+):(\d\d)", text)]


def test_a_log_file_gets_one_update_per_30_s_and_the_last_line(clock):
    log = io.StringIO()
    for _ in progress_bar(range(300), file=log, desc="x"):
        clock.now += 1.0                                        # 1 s a step: 5 minutes in all
    assert LOG_FILE_INTERVAL == 30.0
    lines = updates(log.getvalue())
    assert lines[0] == (0, 0) and lines[-1] == (300, 300)
    gaps = [later - earlier for (_, earlier), (_, later) in zip(lines[:-2], lines[1:-1])]
    assert gaps and all(30 <= gap <= 31 for gap in gaps), lines          # the first step after each 30 s


def test_a_log_file_of_a_short_loop_gets_the_first_and_last_lines_only(clock):
    log = io.StringIO()
    for _ in progress_bar(range(300), file=log, desc="x"):
        clock.now += 0.05
    assert log.getvalue().count("\r") == 2 and "0/300" in log.getvalue() and "300/300" in log.getvalue()


def test_a_terminal_gets_live_updates(clock):
    terminal = Terminal()
    for _ in progress_bar(range(300), file=terminal, desc="x"):
        clock.now += 0.2                                        # past tqdm's 0.1-s minimum: every step shows
    assert [position for position, _ in updates(terminal.getvalue())][:301] == list(range(301))


def test_disabled_writes_nothing():
    log = io.StringIO()
    for _ in progress_bar(range(10), enabled=False, file=log):
        pass
    assert log.getvalue() == ""


class TickingLoader(list):
    """Batches that each take a second of the test's clock."""

    def __init__(self, batches, clock):
        super().__init__(batches)
        self.clock = clock

    def __iter__(self):
        for batch in list.__iter__(self):
            self.clock.now += 1.0
            yield batch


def test_the_training_bar_in_a_log_file_writes_no_line_per_step(capsys, clock):
    """The trainer sets loss and accuracy on its bar after every step; redirected, that is no line per step."""
    trainer, loader = nan_trainer(bad_steps=set())
    trainer.train_network(TickingLoader(loader, clock), epoch=1, show_progress=True)
    out = capsys.readouterr().out
    assert "epoch 1" in out and out.count("\r") == 2 and "8/8" in out      # 8 s: the start and the end
