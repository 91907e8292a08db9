"""TensorBoard event files of a training run, in ``SAVE_PATH/tensorboard/``: its log lines as curves.

Rank 0 writes (``torch.utils.tensorboard``); the other ranks, a run with ``--tensorboard false`` and a Python
without the ``tensorboard`` package (said once, as a warning) get a board that writes nothing. Two step axes:

- ``epoch/...`` (loss, accuracy, LR, margin, utterances/s, data wait) and the evaluation tags (``VEER/LIST``,
  ``minDCF_pP/LIST``; the validation list's ``val_EER/LIST``, ``val_minDCF_pP/LIST``) are at the epoch number,
  the ``IT`` of ``result/scores.txt``, with the same numbers; the mean weights of the last epochs
  (``--average_epochs``) as ``average_VEER/LIST`` and ``average_minDCF_pP/LIST`` at the last epoch;
- ``step/...`` (loss, accuracy, LR, margin of one step) every :data:`STEP_INTERVAL` batches, at the batch position
  counted in first-epoch lengths (:meth:`~spknet.training.trainer.ModelTrainer.step_position`).

A resumed run adds an event file to the same folder; TensorBoard reads the folder's files as one run. Steps that
are trained again (a run resumed from an earlier state than it had logged, after a crash) show twice.
"""

import os

from spknet import distributed
from spknet.logs import log

FOLDER = "tensorboard"
STEP_INTERVAL = 20      # batches between ``step/...`` points: a few hundred per VoxCeleb2 epoch
HINT = "TensorBoard logging is off: the tensorboard package is not installed (pip install tensorboard)"


class TrainingBoard:
    """Writes a run's scalars through ``writer`` (a SummaryWriter, or None: nothing is written)."""

    def __init__(self, writer=None, step_interval: int = STEP_INTERVAL):
        self.writer = writer
        self.step_interval = step_interval

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def _scalars(self, prefix: str, step: int, values: dict) -> None:
        for name, value in values.items():
            if value is not None:
                self.writer.add_scalar(f"{prefix}{name}", value, step)

    def log_step(self, step: int, values: dict) -> None:
        """One training step's numbers (host floats: the trainer's, no device work)."""
        if self.enabled:
            self._scalars("step/", step, values)

    def log_epoch(self, epoch: int, progress, lr: float, margin: float | None) -> None:
        """A completed epoch: what its ``IT`` line says (mean loss and accuracy, the LR it started with), the
        margin it ended with, its speed and the share of its loop spent waiting for data; written to disk now."""
        if not self.enabled:
            return
        self._scalars("epoch/", epoch, {"loss": progress.mean_loss, "accuracy": progress.mean_accuracy, "lr": lr,
                                        "margin": margin, "utterances_per_s": progress.utterances_per_second,
                                        "data_wait": progress.data_wait})
        self.writer.flush()

    def log_evaluation(self, epoch: int, outcome, prefix: str = "") -> None:
        """The EER and minDCF of each labelled trial list of an evaluation (an ``EvalOutcome``); ``prefix`` on
        the tags of another model than the epoch's own (``average_``: the run's final weight average)."""
        if not self.enabled:
            return
        results = [("VEER", "minDCF", result) for result in outcome.tests]
        if outcome.val is not None:
            results.append(("val_EER", "val_minDCF", outcome.val))
        for eer_tag, dcf_tag, result in results:
            if result.metrics is None:
                continue
            name = result.trial_list.name
            self.writer.add_scalar(f"{prefix}{eer_tag}/{name}", result.metrics.eer, epoch)
            for p_target, (value, _) in result.metrics.min_dcf.items():
                self.writer.add_scalar(f"{prefix}{dcf_tag}_p{p_target:g}/{name}", value, epoch)

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self.writer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def open_board(save_path: str, enabled: bool = True) -> TrainingBoard:
    """The run's board: writing to ``save_path/tensorboard/`` on rank 0 when ``enabled`` and TensorBoard is
    installed, else one that writes nothing."""
    if not enabled or not distributed.is_main():
        return TrainingBoard()
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning(HINT)
        return TrainingBoard()
    return TrainingBoard(SummaryWriter(os.path.join(save_path, FOLDER)), STEP_INTERVAL)


__all__ = ["FOLDER", "HINT", "STEP_INTERVAL", "TrainingBoard", "open_board"]
