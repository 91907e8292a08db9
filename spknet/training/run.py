"""A training run: its folder (lock, resolved config, scores.txt), its identity, resume, and the epoch driver.

:func:`train` is what ``trainSpeakerNet.py`` calls: it reads the lists, builds the model, the loader and the
trainer from a :class:`~spknet.specs.RunSpec`, holds the run folder, resumes the furthest good saved state, and
trains, evaluates, saves and logs each epoch. A run stopped by SIGINT/SIGTERM saves its position inside the epoch.
"""

import hashlib
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import replace

import numpy as np
import torch

from spknet import atomic, checkpoints, distributed, logs, plugins
from spknet.checkpoints import load_model_state, read_checkpoint
from spknet.data import (
    GroupBatchSampler,
    TrainDataset,
    check_files_exist,
    collate_readable,
    ignore_stop_signals,
    read_train_list,
    speed_perturbed,
)
from spknet.data.augment import Augmenter
from spknet.data.kaldi import KaldiSource, data_dir_digest, load_kaldi_dir
from spknet.data.shards import ShardSet, ShardStream, resolve_shards
from spknet.errors import SpeakerNetError
from spknet.evaluation import EvalPlan, write_plots
from spknet.evaluation.runner import evaluation_of, load_plan
from spknet.identity import RunDifference, run_differences
from spknet.lock import RunLock
from spknet.logs import log
from spknet.loss._common import IMBALANCED
from spknet.model import SpeakerNet
from spknet.specs import SCHEMA, DataSpec, ModelSpec, RunSpec, flag_name
from spknet.training.bad_files import BadFiles
from spknet.training.board import TrainingBoard, open_board
from spknet.training.initial import load_initial_model
from spknet.training.trainer import INITIAL_EER, EpochProgress, ModelTrainer

SCORE_LINE = "IT %d, LR %f, TEER/T1 %2.2f, TLOSS %f, VEER %2.4f"
TRAIN_LINE = "IT %d, LR %f, TEER %2.2f, TLOSS %f"
# speed perturbation: WeSpeaker's speeds, 1.0 first so that the first classes are the recorded speakers
SPEED_FACTORS = (1.0, 0.9, 1.1)
# The fields a resumed run may not change, beside the model spec and the lists (compared by content). Everything
# else (how long, how fast, where files are, how it is evaluated) is the session's to choose.
DATA_IDENTITY = ("max_frames", "batch_size", "max_seg_per_spk", "per_speaker", "seed", "augment", "speed_perturb",
                 "train_shards")
TRAINING_IDENTITY = ("optimizer", "scheduler", "lr", "lr_decay", "weight_decay", "warmup_epochs", "final_lr",
                     "classes", "margin", "scale", "margin_start_epoch", "margin_rampup_epochs", "hard_prob",
                     "hard_rank", "mixedprec", "freeze_epochs", "network_lr_scale")


# ----------------------------------------------------------------------------------------------------------------
# Identity: what a resume must find unchanged
# ----------------------------------------------------------------------------------------------------------------

def list_digest(paths: str) -> str:
    """SHA-256 of the contents of a (comma-separated) list's files."""
    digest = hashlib.sha256()
    for path in (part.strip() for part in paths.split(",") if part.strip()):
        with open(path, "rb") as handle:
            digest.update(handle.read())
    return digest.hexdigest()


def run_identity(spec: RunSpec, model: ModelSpec) -> dict:
    """The checkpoint's ``run`` entry (schema :data:`~spknet.specs.SCHEMA`): the built model's spec, the other
    options a resume may not change (``max_epoch`` too under a per-iteration schedule, whose decay ends at the last
    epoch), and the lists by content. A run started from ``--initial_model`` adds ``initial_model`` (its path and
    SHA-256, :mod:`spknet.training.initial`) when it loads it, and keeps it through resumes; it is not compared."""
    options = {key: getattr(spec.data, key) for key in DATA_IDENTITY}
    options.update({key: getattr(spec.training, key) for key in TRAINING_IDENTITY})
    if plugins.is_per_iteration(plugins.load("scheduler", spec.training.scheduler)):
        options["max_epoch"] = spec.training.max_epoch
    lists = {"train_list": spec.data.train_list, "test_list": spec.evaluation.test_list,
             "val_list": spec.evaluation.val_list}
    digests = {key: list_digest(path) if path else "" for key, path in lists.items()}
    if spec.data.train_data:        # recorded only when given: a list-trained run's entry stays as it was
        digests["train_data"] = data_dir_digest(spec.data.train_data)
    return {"schema": SCHEMA, "model": model.record(), "options": options, "lists": digests}


class RunMismatch(SpeakerNetError):
    """A resume into a folder that holds a run with other options: ``differences``, the saved run's first
    (:func:`~spknet.identity.run_differences`)."""

    def __init__(self, folder: str, path: str, differences: list[RunDifference]):
        self.folder, self.path, self.differences = folder, path, differences
        lines = [difference.words() for difference in differences]
        super().__init__(f"{folder} holds a run with other options; resuming it would mix two runs:\n  "
                         + "\n  ".join(lines) + f"\nGive the saved options ({os.path.join(folder, CONFIG_FILE)}) or "
                         f"another {flag_name('save_path')} ({flag_name('initial_model')} {path} starts a new run "
                         f"from its weights)")


CONFIG_FILE = "config.yaml"        # the resolved configuration of a training run, in its save path


# ----------------------------------------------------------------------------------------------------------------
# Building the run
# ----------------------------------------------------------------------------------------------------------------

def group_sizes_for(loss_needs, per_speaker: int | None) -> tuple[int, ...]:
    """Utterances per speaker group for the batch sampler."""
    if loss_needs == IMBALANCED:
        if per_speaker:
            log.info(f"note: --nPerSpeaker {per_speaker} ignored: this loss uses 2-or-3 utterance groups")
        return (2, 3)
    size = per_speaker or loss_needs
    if size < loss_needs:
        raise SpeakerNetError(f"--nPerSpeaker {size}: this loss needs at least {loss_needs} utterances per speaker")
    return (size,)


def build_loader(data: DataSpec, pipeline, train_list, loss_needs, device: torch.device):
    """The training DataLoader and its batch sampler (also what ``benchmarks/bench_loader`` measures); for a
    :class:`~spknet.data.shards.ShardSet` the loader of a :class:`~spknet.data.shards.ShardStream`, which is its
    own sampler (``set_epoch``, ``start_at``)."""
    if isinstance(train_list, ShardSet):
        return build_shard_loader(data, pipeline, train_list, loss_needs, device)
    try:
        sampler = GroupBatchSampler(train_list.labels, group_sizes_for(loss_needs, data.per_speaker),
                                    data.batch_size, data.max_seg_per_spk, seed=data.seed, rank=distributed.rank(),
                                    world_size=distributed.world_size(), copies=train_list.copies)
    except SpeakerNetError as error:
        raise SpeakerNetError(f"--batch_size {data.batch_size}: {error}") from None
    workers = data.loader_workers
    # built before any output is written: a missing or empty MUSAN/RIR folder fails the run at once
    try:
        augmenter = Augmenter(data.musan_path, data.rir_path, data.max_frames) if data.augment else None
    except SpeakerNetError as error:
        raise SpeakerNetError(f"--augment --musan_path {data.musan_path} --rir_path {data.rir_path}: {error}") from None
    loader = torch.utils.data.DataLoader(
        TrainDataset(train_list, data.max_frames, augmenter=augmenter, pipeline=pipeline),
        batch_sampler=sampler,
        collate_fn=collate_readable, num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=ignore_stop_signals if workers > 0 else None,
        generator=torch.Generator().manual_seed(data.seed))  # its own generator: the global RNG stays untouched
    return loader, sampler


def build_shard_loader(data: DataSpec, pipeline, shards: ShardSet, loss_needs, device: torch.device):
    """The loader of a shard stream: the stream makes whole batches; its workers persist across epochs (they read
    the epoch and start that ``set_epoch``/``start_at`` put in the stream's shared memory)."""
    augmenter = Augmenter(data.musan_path, data.rir_path, data.max_frames) if data.augment else None
    try:
        stream = ShardStream(shards, group_sizes_for(loss_needs, data.per_speaker), data.batch_size, data.max_frames,
                             data.max_seg_per_spk, seed=data.seed, rank=distributed.rank(),
                             world_size=distributed.world_size(), workers=data.loader_workers, pipeline=pipeline,
                             augmenter=augmenter, allow_pipes=data.allow_pipes)
    except SpeakerNetError as error:
        raise SpeakerNetError(f"--train_shards {data.train_shards} --batch_size {data.batch_size}: {error}") from None
    workers = data.loader_workers
    loader = torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=ignore_stop_signals if workers > 0 else None)
    return loader, stream


def training_data(data: DataSpec):
    """The training utterances and what names them in messages: the tar shards (``train_shards``), the Kaldi
    data directory (``train_data``, a :class:`~spknet.data.kaldi.KaldiSource`) or the training list, checked
    (files present, segments inside their recordings) and speed-perturbed when asked; and the number of recorded
    speakers."""
    if data.train_shards:
        if data.speed_perturb:
            raise SpeakerNetError("--speed_perturb is not available with --train_shards")
        shards = resolve_shards(data.train_shards, data.allow_pipes)
        return shards, data.train_shards, len(shards.speakers)
    if data.train_data:
        source = KaldiSource(load_kaldi_dir(data.train_data, data.allow_pipes, data.max_overshoot))
        name = data.train_data
    else:
        source, name = read_train_list(data.train_list, data.train_path), data.train_list
        check_files_exist(source.files, data.train_list)
    recorded = len(source.speakers)
    if data.speed_perturb:
        source = speed_perturbed(source, SPEED_FACTORS)
    return source, name, recorded


def training_classes(classes: int | None, found: int, speakers: int, train_list: str) -> int:
    """The loss's classes: ``classes`` or, unset, the training list's (its speakers, times the speeds under speed
    perturbation); fewer is an error, since some labels would have no class."""
    if classes is None:
        return found
    if classes < found:
        what = f"{speakers} speakers of {train_list}"
        if found != speakers:
            what = f"{found} classes of --speed_perturb ({what} x {found // speakers} speeds)"
        raise SpeakerNetError(f"--nSpeakers {classes} is smaller than the {what}")
    return classes


class StopRequest:
    """SIGINT/SIGTERM ask training to stop after the current step; a second SIGINT stops at once."""

    def __init__(self):
        self.signal_number = None

    def __enter__(self):
        self.previous = {number: signal.signal(number, self._handle) for number in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, number, frame):
        if self.signal_number is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = number
        print(f"\n{signal.Signals(number).name} received: finishing the current step, then saving", file=sys.stderr)

    def requested(self) -> bool:
        return self.signal_number is not None

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        return False


# Test-only: SPKNET_TEST_HOLD="EPOCH:BATCH:PATH" holds the run after its step on batch BATCH (from 1) of epoch EPOCH:
# it writes PATH (its process id) and waits there for a stop request (or a SIGKILL; at most HOLD_SECONDS), so a test
# that stops or kills the run knows where it is however fast the machine (tests/helpers.py start_held). Unset, it
# costs one environment lookup per epoch.
TEST_HOLD = "SPKNET_TEST_HOLD"
HOLD_SECONDS = 300.0


def held(should_stop, epoch: int, batches: int):
    """``should_stop``, or under :data:`TEST_HOLD` naming ``epoch`` one that holds at the named batch; ``batches``:
    those of the epoch done before (a resume's). train_network asks ``should_stop`` once after every batch."""
    where = os.environ.get(TEST_HOLD)
    if not where:
        return should_stop
    at_epoch, at_batch, marker = where.split(":", 2)
    if int(at_epoch) != epoch:
        return should_stop
    done = batches

    def check() -> bool:
        nonlocal done
        done += 1
        if done == int(at_batch):
            atomic.write_text(marker, str(os.getpid()))
            deadline = time.monotonic() + HOLD_SECONDS
            while not should_stop() and time.monotonic() < deadline:
                time.sleep(0.01)
        return should_stop()
    return check


# ----------------------------------------------------------------------------------------------------------------
# The epoch driver
# ----------------------------------------------------------------------------------------------------------------

class TrainingRun:
    """Where the run stands (last completed epoch, the epoch in progress, the last EER), what each epoch does
    (train, evaluate when due, step the schedule, save, log), and resuming."""

    def __init__(self, spec: RunSpec, trainer: ModelTrainer, plan: EvalPlan, loader, sampler):
        self.spec, self.trainer, self.plan, self.loader, self.sampler = spec, trainer, plan, loader, sampler
        self.save_path = spec.training.save_path
        self.model_dir = os.path.join(self.save_path, "model")
        self.result_dir = os.path.join(self.save_path, "result")
        self.identity = run_identity(spec, trainer.net.spec)
        self.completed = 0                       # last completed epoch
        self.progress: EpochProgress | None = None
        self.last_eer = INITIAL_EER
        self.board = TrainingBoard()             # TensorBoard: open_board's, while the run folder is held
        self.bad_files = BadFiles(spec.data.max_bad_files, self.result_dir)

    def resume(self) -> bool:
        """Continue from the furthest good saved state of the run folder, if any, and only the same run."""
        previous = checkpoints.resume_point(self.model_dir, self.spec.training.trust_checkpoint)
        if not previous:
            return False
        path, checkpoint = previous
        if checkpoint.get("run"):
            differences = run_differences(checkpoint["run"], self.identity)
            if differences:
                raise RunMismatch(self.save_path, path, differences)
            if checkpoint["run"].get("initial_model"):       # where the run started: kept by every later save
                self.identity["initial_model"] = checkpoint["run"]["initial_model"]
        load_model_state(self.trainer.net, checkpoint["model_state_dict"], path, strict=True)
        self.completed = int(checkpoint["epoch"])
        self.last_eer = float(checkpoint.get("last_eer", self.last_eer))
        self.progress = EpochProgress(**checkpoint["progress"]) if checkpoint.get("progress") else None
        try:
            self.trainer.load_state_dict(checkpoint, None if self.progress else self.completed, self.last_eer)
        except (ValueError, KeyError, RuntimeError) as error:
            raise SpeakerNetError(f"{path}: its optimizer or schedule state does not fit this run's "
                                  f"(optimizer, schedule or loss changed?): {error}") from None
        checkpoints.restore_random_state(checkpoint)
        self.bad_files.load()
        where = f"epoch {self.progress.epoch}, batch {self.progress.batches}" if self.progress else \
            f"after epoch {self.completed}"
        log.info(f"Model {path} loaded from previous state! Resuming {where}")
        return True

    def averaged_epochs(self) -> range:
        """The last epochs whose mean weights the run scores at its end (``average_epochs``; none below 2)."""
        return self.spec.training.averaged_epochs()

    def save(self, eer: float | None = None) -> None:
        """Rank 0 writes an epoch checkpoint (evaluated epochs and those the final average takes) or
        ``resume.state``."""
        if distributed.is_main():
            state = self.trainer.state_dict()
            if eer is not None or self.completed in self.averaged_epochs():
                checkpoints.save_epoch(self.model_dir, state, self.completed, self.last_eer, self.identity,
                                       evaluated=eer is not None)
            else:
                checkpoints.save_resume_state(self.model_dir, state, self.completed, self.last_eer,
                                              self.progress.state() if self.progress else None, self.identity)
        distributed.barrier()

    def run(self, stop: StopRequest, scores) -> int:
        for epoch in range(self.completed + 1, self.spec.training.max_epoch + 1):
            if not self.epoch(epoch, stop, scores):
                self.save()
                state = os.path.join(self.model_dir, checkpoints.RESUME_STATE)
                print(f"Stopped during epoch {epoch} after {self.progress.batches} batches; state saved to "
                      f"{state}. Run the same command again to resume.", file=sys.stderr)
                return 128 + stop.signal_number
        self.score_average(scores)
        return 0

    def log_network_lr(self, epoch: int, lr: float) -> None:
        """The original's LR line gives the loss head's LR; a fine-tuning run also says what its network does."""
        scale = self.spec.training.network_lr_scale
        if self.trainer.network_frozen(epoch):
            log.info(f"epoch {epoch}: the network is frozen (BatchNorm statistics included); the loss head trains "
                     f"alone")
        elif scale != 1.0:
            log.info(f"epoch {epoch}: the network's LR is {lr * scale:f} ({scale:g} x the loss head's)")

    def epoch(self, epoch: int, stop: StopRequest, scores) -> bool:
        """Train, evaluate when due, step the schedule, save, log. False when a stop was requested."""
        self.sampler.set_epoch(epoch)
        progress = self.progress if self.progress is not None and self.progress.epoch == epoch else None
        self.sampler.start_at(progress.batches if progress is not None else 0)
        # the LR at the epoch's start, also when resuming inside it (a per-iteration schedule has moved since)
        lr = progress.start_lr if progress is not None and progress.start_lr is not None else self.trainer.lr
        log.info(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {epoch} Training {self.spec.model.model} with LR {lr:f}...")
        self.log_network_lr(epoch, lr)
        started = time.time()
        self.bad_files.start_epoch()
        should_stop = held(stop.requested, epoch, progress.batches if progress is not None else 0)
        self.progress = self.trainer.train_network(self.bad_files.batches(self.loader), epoch, progress,
                                                   should_stop, monitor=self.board if self.board.enabled else None)
        if not self.progress.finished:
            return False
        trained = self.progress
        loss, accuracy = self.progress.mean_loss, self.progress.mean_accuracy
        train_seconds = time.time() - started
        self.completed, self.progress = epoch, None
        if epoch % self.spec.training.test_interval == 0:
            line, extra, eer = self.evaluate(epoch, lr, loss, accuracy, train_seconds)
            self.last_eer = eer
            self.trainer.step_schedule(eer)
            self.save(eer)
        else:
            line = TRAIN_LINE % (epoch, lr, accuracy, loss)
            extra = f"INFO epoch {epoch}: train {train_seconds:.1f} s"
            self.trainer.step_schedule(self.last_eer)
            self.save()
        extra = with_data_wait(extra, trained.data_wait)
        self.board.log_epoch(epoch, trained, lr, self.trainer.margin)
        if self.bad_files.this_epoch:      # on the epoch's own INFO line (the first; more lists follow it)
            first, newline, rest = extra.partition("\n")
            extra = f"{first}, bad files {len(self.bad_files.this_epoch)}{newline}{rest}"
        log.info(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}")
        log.info(extra)
        scores.info(line + "\n" + extra)
        return True

    def evaluate(self, epoch: int, lr: float, loss: float, accuracy: float, train_seconds: float):
        """The evaluated epoch's score line, its INFO lines and the EER that steers (the validation list's if
        there is one)."""
        outcome = evaluation_of(self.trainer.net, self.spec.evaluation, self.plan, self.trainer.device)
        self.board.log_evaluation(epoch, outcome)
        first = outcome.tests[0]
        steering = outcome.val if outcome.val is not None else first
        self.plot(outcome)
        line = SCORE_LINE % (epoch, lr, accuracy, loss, first.metrics.eer)
        val = f", val EER {outcome.val.metrics.eer:2.4f}" if outcome.val is not None else ""
        extra = (f"INFO epoch {epoch}: {first.metrics.summary()}{val}, train {train_seconds:.1f} s, "
                 f"eval {outcome.seconds:.1f} s" + (f", list {first.trial_list.published}"
                                                     if first.trial_list.published else ""))
        for result in outcome.tests[1:] + ([outcome.val] if outcome.val is not None else []):
            role = "val" if result is outcome.val else "list"
            summary = result.metrics.summary() if result.metrics is not None else \
                f"{len(result.trial_list.trials)} unlabelled trials scored"
            extra += f"\nINFO epoch {epoch} {role} {result.trial_list.describe()}: {summary}"
        return line, extra, steering.metrics.eer

    def plot(self, outcome) -> None:
        """The DET curve and score histogram of each labelled test list (rank 0): the last evaluation's."""
        if distributed.is_main():
            several = len(outcome.tests) > 1
            for result in outcome.tests:
                if result.metrics is not None:
                    write_plots(result.scores, result.trial_list.labels, self.result_dir,
                                f"_{result.trial_list.name}" if several else "", eer=result.metrics.eer)

    def score_average(self, scores) -> None:
        """After the last epoch, the mean weights of :meth:`averaged_epochs` (BatchNorm statistics included)
        are scored on the test lists, plotted, logged on an ``INFO`` line (the ``IT`` lines stay the original's)
        and saved as ``model/average_lastN.model``, last, so that a run stopped before then does it again when
        resumed."""
        window = self.averaged_epochs()
        if not window:
            return
        out = os.path.join(self.model_dir, f"average_last{len(window)}.model")
        held = dict(checkpoints.epoch_checkpoints(self.model_dir))
        epochs = [epoch for epoch in window if epoch in held]
        if self._holds_average(out, epochs):       # a finished run run again
            return
        if len(epochs) < len(window):       # saved by a session of this run with a smaller average
            log.warning(f"{self.model_dir} holds no checkpoint of epoch(s) "
                        f"{', '.join(str(epoch) for epoch in window if epoch not in held)}: the average takes "
                        f"{len(epochs)} of the last {len(window)} epochs")
        if len(epochs) < 2:
            return
        averaged = checkpoints.average_checkpoints([held[epoch] for epoch in epochs],
                                                   self.spec.training.trust_checkpoint)
        # training is over, so the trainer's network may hold the average
        load_model_state(self.trainer.net, averaged["model_state_dict"], out, strict=True)
        outcome = evaluation_of(self.trainer.net, self.spec.evaluation, self.plan, self.trainer.device)
        self.board.log_evaluation(self.completed, outcome, prefix="average_")
        self.plot(outcome)
        if distributed.is_main():
            checkpoints.save_averaged(out, averaged)
        several = len(outcome.tests) > 1
        described = ", ".join((f"{result.trial_list.name} " if several else "") + result.metrics.summary()
                              for result in outcome.tests if result.metrics is not None)
        line = f"INFO average of epochs {_span(epochs)} ({out}): {described}, eval {outcome.seconds:.1f} s"
        log.info(line)
        scores.info(line)
        distributed.barrier()

    def _holds_average(self, path: str, epochs: list[int]) -> bool:
        """Whether ``path`` is the mean of ``epochs`` (not of an earlier end's, before ``--max_epoch`` grew)."""
        if not os.path.isfile(path):
            return False
        try:
            return read_checkpoint(path, self.spec.training.trust_checkpoint).get("averaged_epochs") == epochs
        except SpeakerNetError:             # damaged: scored and written again
            return False


def _span(epochs: list[int]) -> str:
    """``21-25`` for consecutive epochs, else ``18, 20, 21``."""
    if epochs == list(range(epochs[0], epochs[-1] + 1)):
        return f"{epochs[0]}-{epochs[-1]}"
    return ", ".join(map(str, epochs))


def with_data_wait(extra: str, data_wait: float) -> str:
    """The epoch's INFO lines with the share of its training loop spent waiting for data at the end of the
    first (``, data wait 12%``)."""
    first, newline, rest = extra.partition("\n")
    return f"{first}, data wait {data_wait:.0%}{newline}{rest}"


# ----------------------------------------------------------------------------------------------------------------
# The entry
# ----------------------------------------------------------------------------------------------------------------

def train(spec: RunSpec, device: torch.device, describe) -> int:
    """Train the run ``spec`` on ``device``: 0, or 128 + the signal that stopped it (its state saved).

    ``describe(classes)`` gives the text of :data:`CONFIG_FILE` in the run folder (what the command line reads
    back to repeat the run) and the header of ``result/scores.txt``: the command line's to word, once the
    training classes are known.
    """
    data = spec.data
    train_list, train_name, recorded = training_data(data)
    plan = load_plan(spec.evaluation, data, training=True)
    classes = training_classes(spec.training.classes, len(train_list.speakers), recorded, train_name)
    spec = replace(spec, training=replace(spec.training, classes=classes))
    torch.manual_seed(data.seed)
    np.random.seed(data.seed)
    net = SpeakerNet(spec.model, spec.training.loss(classes))
    loader, sampler = build_loader(data, net.spec.pipeline(), train_list, net.utterances_per_speaker, device)
    sampler.set_epoch(1)        # the first epoch's length stands for every epoch's in per-iteration schedules
    trainer = ModelTrainer(net, device, spec.training, steps_per_epoch=len(sampler))
    run = TrainingRun(spec, trainer, plan, loader, sampler)
    try:
        # The stop handlers are in place before the run makes its first file: a SIGINT/SIGTERM from then on, even
        # during the start, stops the run after one step with its state saved (exit 128 + the signal), never with
        # half a start on disk. Reading the lists and building the model write nothing: a signal there just ends it.
        with StopRequest() as stop:
            if distributed.is_main():
                os.makedirs(run.save_path, exist_ok=True)
            # rank 0 holds the folder for the whole run; a second run on it stops here, having written nothing
            with RunLock(run.save_path) if distributed.is_main() else nullcontext():
                return _train(run, stop, *describe(classes))
    finally:
        shutdown_workers(loader)


def _train(run: TrainingRun, stop: StopRequest, config_text: str, header: str) -> int:
    """Resume (or start from the initial model) and run the epochs."""
    main_process = distributed.is_main()
    # rank 0 first: it sets damaged files aside, and the other ranks then read what it read
    resumed = run.resume() if main_process else False
    distributed.barrier()
    resumed = resumed if main_process else run.resume()
    initial = run.spec.training.initial_model
    if not resumed and initial:
        loaded = load_initial_model(run.trainer.net, initial, run.spec.training.classes,
                                    run.spec.training.trust_checkpoint)
        run.identity["initial_model"] = loaded.record()
        log.info(loaded.describe())
    if main_process:
        os.makedirs(run.model_dir, exist_ok=True)
        os.makedirs(run.result_dir, exist_ok=True)
        checkpoints.remove_stale_temporaries(run.model_dir)
        atomic.write_text(os.path.join(run.save_path, CONFIG_FILE), config_text)
    scores_path = os.path.join(run.result_dir, "scores.txt") if main_process else None
    with logs.scores_file(scores_path) as scores, open_board(run.save_path, run.spec.training.tensorboard) as run.board:
        scores.info(header)
        return run.run(stop, scores)


def shutdown_workers(loader) -> None:
    """End this run's loader workers (they ignore SIGTERM, so an interpreter exit would wait on them); the
    workers of other loaders in the process are left alone."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is None or not hasattr(iterator, "_shutdown_workers"):
        return
    iterator._shutdown_workers()
    for worker in getattr(iterator, "_workers", []):
        if worker.is_alive():          # one that did not take the shutdown (stuck in a read): ended
            worker.kill()
            worker.join(timeout=10)
    loader._iterator = None


__all__ = ["CONFIG_FILE", "SCORE_LINE", "SPEED_FACTORS", "TRAIN_LINE", "RunMismatch", "StopRequest", "TrainingRun",
           "build_loader", "group_sizes_for", "list_digest", "run_identity", "train", "training_classes",
           "training_data"]
