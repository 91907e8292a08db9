"""Training: the network (DDP, torch.compile, mixed precision), its optimizer, scheduler and gradient scaler, the
step and the epoch. The epoch driver (:mod:`spknet.training.run`) says where an epoch starts and when to stop;
this module knows no file path."""

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from spknet import distributed, plugins
from spknet.errors import SpeakerNetError, check_choice
from spknet.logs import log
from spknet.margin import MarginSchedule
from spknet.progress import progress_bar
from spknet.specs import TrainingSpec

INITIAL_EER = 50.0      # what the original's plateau scheduler sees before the first evaluation
AUTOCAST_DTYPES = {None: None, "fp16": torch.float16, "bf16": torch.bfloat16}     # --mixedprec


@dataclass
class EpochProgress:
    """Where an epoch stands: batches consumed (including skipped ones), the running sums of what is logged, and
    the LR the epoch started with (what its log lines print, also after a resume inside it under a per-iteration
    schedule; None when a saved state does not hold it, and the log lines print the current LR).

    The timing of this process's part of the epoch (not kept in checkpoints): ``wait_seconds`` blocked waiting
    for the loader's next batch, ``loop_seconds`` in the whole loop (waiting and stepping), ``utterances`` in the
    steps made; the last step's loss and accuracy."""
    epoch: int
    batches: int = 0
    steps: int = 0
    loss_sum: float = 0.0
    accuracy_sum: float = 0.0
    start_lr: float | None = None
    finished: bool = False
    wait_seconds: float = field(default=0.0, repr=False)
    loop_seconds: float = field(default=0.0, repr=False)
    utterances: int = field(default=0, repr=False)
    last_loss: float = field(default=math.nan, repr=False)
    last_accuracy: float = field(default=math.nan, repr=False)

    SESSION_FIELDS = ("finished", "wait_seconds", "loop_seconds", "utterances", "last_loss", "last_accuracy")

    def count_batch(self) -> None:
        self.batches += 1

    def add(self, loss: float, accuracy: float) -> None:
        self.steps += 1
        self.loss_sum += loss
        self.accuracy_sum += accuracy
        self.last_loss, self.last_accuracy = loss, accuracy

    def finish(self) -> None:
        self.finished = True

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.steps, 1)

    @property
    def mean_accuracy(self) -> float:
        return self.accuracy_sum / max(self.steps, 1)

    @property
    def data_wait(self) -> float:
        """The share of the loop's time spent waiting for data, in [0, 1] (0 before any batch)."""
        return min(self.wait_seconds / self.loop_seconds, 1.0) if self.loop_seconds > 0 else 0.0

    @property
    def utterances_per_second(self) -> float:
        return self.utterances / self.loop_seconds if self.loop_seconds > 0 else 0.0

    def state(self) -> dict:
        """What a checkpoint keeps of an unfinished epoch (the ``progress`` entry): no session timing."""
        state = asdict(self)
        for name in self.SESSION_FIELDS:
            del state[name]
        return state


def parameter_groups(net: nn.Module, training: TrainingSpec):
    """What the optimizer trains: the network at ``lr * network_lr_scale`` and the loss head at ``lr``, two groups;
    one group of all parameters when the scale is 1 (the original's optimizer state, which runs saved before the
    scale existed hold, so they resume)."""
    if training.network_lr_scale == 1.0:
        return net.parameters()
    return [{"params": list(net.__S__.parameters()), "lr": training.lr * training.network_lr_scale},
            {"params": list(net.__L__.parameters())}]


def _is_plateau(scheduler) -> bool:
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


class ModelTrainer:
    """Owns the network, its optimizer, scheduler and scaler; trains epochs.

    ``training`` names the optimizer and schedule plugins and gives their options; ``steps_per_epoch`` (the
    loader's length) is what per-iteration schedules and the margin schedule count in. The margin schedule
    (``training.margin_start_epoch``, None: none) rises to the margin the loss was built with.
    """

    max_bad_steps = 5   # consecutive non-finite losses before the run stops

    def __init__(self, net: nn.Module, device: torch.device, training: TrainingSpec,
                 steps_per_epoch: int | None = None):
        # oneDNN's CPU convolutions run 2-D networks faster in the channels-last layout (docs/results.md, "Why the
        # code is as it is"); parameters without four dimensions are unaffected.
        self.net = net.to(device, memory_format=torch.channels_last if device.type == "cpu" else torch.preserve_format)
        self.device = device
        # What the training step calls: the network itself, or its DistributedDataParallel wrapper.
        self.model = self.net
        self.freeze_epochs = training.freeze_epochs
        if distributed.is_active():
            # a frozen network's parameters get no gradient: DDP must look for the parameters a step did not use
            self.model = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=self.freeze_epochs > 0)
        if training.compile:
            self.model = torch.compile(self.model)   # the step only: checkpoints keep the plain parameter names
        self.autocast_dtype = AUTOCAST_DTYPES[check_choice("mixed precision", training.mixedprec, AUTOCAST_DTYPES)]
        self.scaler = torch.amp.GradScaler(device.type, enabled=training.mixedprec == "fp16")
        self.optimizer = plugins.load("optimizer", training.optimizer)(parameter_groups(self.net, training),
                                                                       **training.optimizer_options())
        self.scheduler = plugins.load("scheduler", training.scheduler)(self.optimizer,
                                                                       **training.scheduler_options(steps_per_epoch))
        self.per_iteration = plugins.is_per_iteration(self.scheduler)
        self.steps_per_epoch = steps_per_epoch
        if _is_plateau(self.scheduler):
            self.scheduler.step(INITIAL_EER)     # as the original, whose plateau step precedes every epoch
        self.margin_schedule = self._margin_schedule(training.margin_start_epoch, training.margin_rampup_epochs,
                                                     steps_per_epoch)
        self._running_stats = [buffer for module in self.net.modules()
                               if isinstance(module, nn.modules.batchnorm._BatchNorm) for buffer in module.buffers()]

    def _margin_schedule(self, start_epoch, rampup_epochs, steps_per_epoch) -> MarginSchedule | None:
        """The loss's margin schedule, rising to the margin the loss was built with (a loss with a margin:
        :meth:`spknet.specs.TrainingSpec.check`)."""
        if start_epoch is None:
            return None
        return MarginSchedule(final=self.net.margin, start_epoch=start_epoch, rampup_epochs=rampup_epochs or 0.0,
                              steps_per_epoch=steps_per_epoch or 0)

    @property
    def margin(self) -> float | None:
        """The loss's margin now (None for a loss without one)."""
        return self.net.margin

    def apply_margin(self, epoch: int, batch: int) -> None:
        """Set the scheduled margin for batch ``batch`` of epoch ``epoch`` (before its step; a resumed run gets
        the margin of its position at once, since it is recomputed, not saved). Host arithmetic only."""
        if self.margin_schedule is not None:
            self.net.set_margin(self.margin_schedule.at(epoch, batch))

    @property
    def lr(self) -> float:
        """The LR of the loss head (the last group), the one ``--lr`` sets; the network's is
        ``--network_lr_scale`` times it, and every schedule keeps that ratio (it scales each group alike)."""
        return self.optimizer.param_groups[-1]["lr"]

    def network_frozen(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` trains the loss head alone (``--freeze_epochs``)."""
        return epoch <= self.freeze_epochs

    def _freeze_network(self, frozen: bool) -> None:
        """A frozen network gets no gradient (so the optimizer leaves it, weight decay included) and runs as in
        evaluation: BatchNorm uses its running statistics and does not update them, no dropout."""
        for parameter in self.net.__S__.parameters():
            parameter.requires_grad_(not frozen)
        if frozen:
            self.net.__S__.eval()

    def step_schedule(self, eer: float) -> None:
        """The LR schedule after a completed epoch: the plateau schedule sees the latest EER, the others count; a
        per-iteration schedule was stepped after each batch instead."""
        if self.per_iteration:
            return
        if _is_plateau(self.scheduler):
            self.scheduler.step(eer)
        else:
            self.scheduler.step()

    # ---- state ----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        weights = self.net.state_dict()
        for key, value in weights.items():      # the plain layout whatever the training layout, as the original's
            weights[key] = value.contiguous()
        return {
            "model_state_dict": weights,
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": self.scheduler.state_dict(),
            "scaler_state_dict": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict, completed_epoch: int | None = None, last_eer: float = INITIAL_EER) -> None:
        """Optimizer, scheduler and scaler, as far as ``state`` has them (the weights: :func:`load_model_state`).

        A plateau schedule is stepped at the end of each epoch. One whose ``last_epoch`` is still
        ``completed_epoch`` (a state that steps it at the start of each epoch) lacks that epoch's step, which is
        made here with ``last_eer``, so the schedule stands where the end-of-epoch stepping puts it.
        """
        if "optimizer_state_dict" in state:
            self.optimizer.load_state_dict(state["optimizer_state_dict"])
        if "scheduler_state_dict" in state:
            self.scheduler.load_state_dict(state["scheduler_state_dict"])
            if (_is_plateau(self.scheduler) and completed_epoch is not None
                    and self.scheduler.last_epoch == completed_epoch):
                self.scheduler.step(last_eer)
        if state.get("scaler_state_dict"):
            self.scaler.load_state_dict(state["scaler_state_dict"])

    # ---- training -------------------------------------------------------------------------------------------

    def _step(self, waves, labels, groups: int, progress: EpochProgress) -> bool:
        """One optimizer step; False (and no step) when the loss is not finite."""
        self.optimizer.zero_grad(set_to_none=True)
        running_stats = [buffer.clone() for buffer in self._running_stats]
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            loss, accuracy = self.model(waves, labels, groups)
        # The one host synchronisation of the step: the values we log (and check before applying the step).
        loss_value, accuracy_value = torch.stack([loss.detach(), accuracy.detach().to(loss.dtype)]).tolist()
        progress.count_batch()
        if not math.isfinite(loss_value):
            torch._foreach_copy_(self._running_stats, running_stats)   # a bad batch must not poison BatchNorm
            log.warning(f"epoch {progress.epoch}, batch {progress.batches - 1}: non-finite loss ({loss_value}); "
                        f"step skipped")
            return False
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        progress.add(loss_value, accuracy_value)
        return True

    def step_position(self, epoch: int, batches: int, epoch_batches: int) -> int:
        """A global step for batch count ``batches`` of epoch ``epoch`` (of ``epoch_batches``), in units of the
        first epoch's length (``steps_per_epoch``): epoch ``e`` spans ``(e - 1) * S`` to ``e * S`` even when its
        length differs, so the step axis of a monitor rises through epochs, and a resumed run continues it."""
        per_epoch = self.steps_per_epoch or epoch_batches
        return (epoch - 1) * per_epoch + round(batches * per_epoch / max(epoch_batches, 1))

    def train_network(self, loader, epoch: int, progress: EpochProgress | None = None,
                      should_stop: Callable[[], bool] = lambda: False, show_progress: bool = True,
                      monitor=None) -> EpochProgress:
        """Train epoch ``epoch`` from ``progress`` (None: its start) until its end or until ``should_stop()``.

        Returns the epoch's progress: ``finished`` when the loader was exhausted, else where it stopped; its
        timing says how long the loop waited for the loader. The loader starts where ``progress`` stands (the
        caller positions its sampler). ``monitor`` (or None) gets ``monitor.log_step(step, values)`` after every
        ``monitor.step_interval``-th batch that made a step, ``values`` the step's loss, accuracy, LR and margin:
        host numbers the step has already, so monitoring adds no device synchronisation.
        """
        self.net.train()
        self._freeze_network(self.network_frozen(epoch))
        progress = progress if progress is not None else EpochProgress(epoch, start_lr=self.lr)
        epoch_batches = progress.batches + len(loader)
        bad_in_a_row = 0
        bar = progress_bar(enabled=show_progress and distributed.is_main(), desc=f"epoch {epoch}", unit="batch",
                           initial=progress.batches, total=epoch_batches)
        # The time blocked for the next batch (from the first epoch's worker start on) is the loader's lag:
        # perf_counter only, no device synchronisation. On a GPU the previous step's backward may still run
        # meanwhile (a step syncs on its loss alone), so it bounds the GPU's wait for data from above.
        fetching = time.perf_counter()
        batches = iter(loader)
        while True:
            try:
                waves, labels, sizes = next(batches)
            except StopIteration:
                break
            progress.wait_seconds += time.perf_counter() - fetching
            waves = waves.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            self.apply_margin(epoch, progress.batches)
            if len(sizes):
                stepped = self._step(waves, labels, len(sizes), progress)
            else:       # every group of the batch unreadable and skipped (--max_bad_files): nothing to step on
                progress.count_batch()
                stepped = None
            if stepped and monitor is not None and progress.batches % monitor.step_interval == 0:
                position = self.step_position(epoch, progress.batches, epoch_batches)
                monitor.log_step(position, self._step_values(progress))
            if self.per_iteration:
                self.scheduler.step()       # after every batch, a skipped one too: the LR follows the position
            if stepped:
                bad_in_a_row = 0
                progress.utterances += waves.shape[0]
            elif stepped is False:
                bad_in_a_row += 1
                if bad_in_a_row >= self.max_bad_steps:
                    raise SpeakerNetError(f"epoch {epoch}: {bad_in_a_row} non-finite losses in a row (last at batch "
                                          f"{progress.batches - 1}); stopping. The last good checkpoint is kept; "
                                          f"try a lower --lr")
            now = time.perf_counter()
            progress.loop_seconds += now - fetching
            fetching = now
            bar.set_postfix(loss=f"{progress.mean_loss:.4f}", acc=f"{progress.mean_accuracy:.2f}%",
                            utt_s=f"{progress.utterances_per_second:.1f}", refresh=False)
            bar.update(1)
            if should_stop():
                bar.close()
                return progress
        bar.close()
        if progress.steps == 0:
            raise SpeakerNetError(f"epoch {epoch}: no training step was made (empty loader or only bad batches)")
        progress.finish()
        return progress

    def _step_values(self, progress: EpochProgress) -> dict:
        """What a monitor logs of the step just made (the LR it was made with: before a per-iteration schedule
        moves it)."""
        values = {"loss": progress.last_loss, "accuracy": progress.last_accuracy, "lr": self.lr}
        if self.margin is not None:
            values["margin"] = self.margin
        return values
