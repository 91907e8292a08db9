"""Progress bars: every update on a terminal, at most one per 30 s when the output is a file."""

import io
import time

from spknet.progress import LOG_FILE_INTERVAL, progress_bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_file_gets_the_first_and_last_lines_only():
    log = io.StringIO()
    for _ in progress_bar(range(300), file=log, desc="x"):
        time.sleep(0.001)
    assert LOG_FILE_INTERVAL == 30.0
    assert log.getvalue().count("\r") == 2 and "300/300" in log.getvalue()


def test_a_terminal_gets_live_updates():
    terminal = Terminal()
    for _ in progress_bar(range(300), file=terminal, desc="x", mininterval=0.0):
        time.sleep(0.001)
    assert terminal.getvalue().count("\r") > 100


def test_disabled_writes_nothing():
    log = io.StringIO()
    for _ in progress_bar(range(10), enabled=False, file=log):
        pass
    assert log.getvalue() == ""


def test_the_training_bar_in_a_log_file_writes_no_line_per_step(capsys):
    """The trainer sets loss and accuracy on its bar after every step; redirected, that is no line per step."""
    from tests.test_robustness import nan_trainer
    trainer, loader = nan_trainer(bad_steps=set())
    started = time.monotonic()
    trainer.train_network(loader, epoch=1, show_progress=True)
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    # the start and the end, and one update per LOG_FILE_INTERVAL on a slow (shared) machine
    assert "epoch 1" in out and out.count("\r") <= 2 + int(elapsed // LOG_FILE_INTERVAL)
