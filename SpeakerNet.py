"""The model wrapper (embedding network ``__S__`` + loss ``__L__``), the trainer, evaluation and checkpoints."""

import glob
import math
import os
import pickle
import re
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from core import atomic
from core import distributed
from core import evaluation
from core import plugins
from DatasetLoader import NUM_EVAL, Trial
from core.errors import SpeakerNetError
from loss._common import IMBALANCED

CHECKPOINT_PATTERN = "model%09d.model"


class SpeakerNet(nn.Module):
    """``__S__`` maps waveforms to embeddings; ``__L__`` (absent when only evaluating) is the training objective."""

    def __init__(self, model: str, trainfunc: str = "", **kwargs):
        super().__init__()
        if not model:
            raise SpeakerNetError(f"--model is required; choices: {', '.join(plugins.choices('models'))}")
        self.__S__ = plugins.load("models", model)(**kwargs)
        self.__L__ = plugins.load("loss", trainfunc)(**kwargs) if trainfunc else None
        self.train_normalize = getattr(self.__L__, "train_normalize", True)
        self.test_normalize = getattr(self.__L__, "test_normalize", True)

    @property
    def utterances_per_speaker(self):
        return self.__L__.utterances_per_speaker

    def forward(self, waves: torch.Tensor, labels: torch.Tensor, groups: int):
        """Loss and accuracy of a flat batch of ``groups`` speaker groups (labels per utterance)."""
        embeddings = self.__S__(waves)
        if embeddings.dtype in (torch.float16, torch.bfloat16):
            embeddings = embeddings.float()          # the loss runs in float32 under mixed precision
        if self.train_normalize:
            embeddings = F.normalize(embeddings, p=2, dim=1)
        # Under torch.distributed the loss sees the global batch (every rank's groups, in rank order).
        imbalanced = self.__L__.utterances_per_speaker == IMBALANCED
        labels = distributed.gather_without_grad(labels, equal_sizes=not imbalanced)
        embeddings = distributed.gather_with_grad(embeddings, equal_sizes=not imbalanced)
        if imbalanced:
            return self.__L__(embeddings, labels)
        groups *= distributed.world_size()
        per_group = embeddings.shape[0] // groups
        return self.__L__(embeddings.view(groups, per_group, -1), labels.view(groups, per_group)[:, 0])


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------

def read_checkpoint(path: str) -> dict:
    """Any checkpoint format of SPEC section 8, as ``{"model_state_dict": flat state, ...}``."""
    if not os.path.isfile(path):
        raise SpeakerNetError(f"{path}: checkpoint not found")
    try:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            loaded = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for corrupt files
        raise SpeakerNetError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if isinstance(loaded, dict) and "model_state_dict" in loaded:
        checkpoint = dict(loaded)
    elif isinstance(loaded, dict) and loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        checkpoint = {"model_state_dict": loaded}          # the original's flat state dict
    else:
        raise SpeakerNetError(f"{path}: not a SpeakerNet checkpoint (expected a state dict of tensors or a dict "
                              f"with 'model_state_dict')")
    state = checkpoint["model_state_dict"]
    checkpoint["model_state_dict"] = {key[len("module."):] if key.startswith("module.") else key: value
                                      for key, value in state.items()}
    return checkpoint


def load_model_state(net: nn.Module, state: dict, source: str) -> dict:
    """Copy matching tensors into ``net``; skip, with a warning naming them, keys that are unknown or misshapen.

    Returns ``{"loaded", "missing", "unexpected", "misshapen"}`` key lists.
    """
    own = net.state_dict()
    report = {"loaded": [], "missing": [], "unexpected": [], "misshapen": []}
    with torch.no_grad():
        for key, value in state.items():
            if key not in own:
                report["unexpected"].append(key)
            elif own[key].shape != value.shape:
                report["misshapen"].append(f"{key} (model {tuple(own[key].shape)}, file {tuple(value.shape)})")
            else:
                own[key].copy_(value)
                report["loaded"].append(key)
    report["missing"] = [key for key in own if key not in state]
    if not report["loaded"]:
        raise SpeakerNetError(f"{source}: no key of this checkpoint matches the model "
                              f"(file keys start with {sorted(state)[:3]}); is it from another model?")
    for kind in ("misshapen", "unexpected", "missing"):
        keys = report[kind]
        model_keys = [k for k in keys if k.startswith("__S__.")]
        if model_keys or (keys and kind == "misshapen"):
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            print(f"WARNING: {source}: {kind} key(s) skipped: {shown}", file=sys.stderr)
        elif keys:
            print(f"note: {source}: {len(keys)} {kind} loss key(s) ({', '.join(keys[:4])}) left as initialised",
                  file=sys.stderr)
    return report


def latest_checkpoint(model_dir: str) -> tuple[str, int] | None:
    """The newest complete ``model%09d.model`` in ``model_dir`` and its epoch."""
    found = []
    for path in glob.glob(os.path.join(model_dir, "model*.model")):
        match = re.fullmatch(r"model(\d{9})\.model", os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    if not found:
        return None
    epoch, path = max(found)
    return path, epoch


# ----------------------------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class EpochProgress:
    """Where an epoch stands: batches consumed (including skipped ones) and the running sums of what is logged."""
    epoch: int
    batches: int = 0
    steps: int = 0
    loss_sum: float = 0.0
    accuracy_sum: float = 0.0

    def add(self, loss: float, accuracy: float) -> None:
        self.steps += 1
        self.loss_sum += loss
        self.accuracy_sum += accuracy

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.steps, 1)

    @property
    def mean_accuracy(self) -> float:
        return self.accuracy_sum / max(self.steps, 1)


def _is_plateau(scheduler) -> bool:
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


class ModelTrainer:
    """Owns the network, optimizer and scheduler; trains epochs, evaluates trial lists, saves and resumes."""

    max_bad_steps = 5   # consecutive non-finite losses before the run stops

    def __init__(self, net: SpeakerNet, device: torch.device, optimizer: str = "adam", scheduler: str = "plateau",
                 mixedprec: str | None = None, compile: bool = False, **kwargs):
        self.net = net.to(device)
        self.device = device
        # What the training step calls: the network itself, or its DistributedDataParallel wrapper.
        self.model = self.net
        if distributed.is_active() and net.__L__ is not None:
            self.model = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[device.index] if device.type == "cuda" else None)
        if compile:
            self.model = torch.compile(self.model)   # the step only: checkpoints keep the plain parameter names
        self.autocast_dtype = {None: None, "fp16": torch.float16, "bf16": torch.bfloat16}[mixedprec]
        self.scaler = torch.amp.GradScaler(device.type, enabled=mixedprec == "fp16")
        self.optimizer = plugins.load("optimizer", optimizer)(self.net.parameters(), **kwargs)
        self.scheduler = plugins.load("scheduler", scheduler)(self.optimizer, **kwargs)
        self.last_eer = 50.0       # what the original's plateau scheduler sees before the first evaluation
        self.epoch = 0             # last completed epoch
        self.progress = None       # EpochProgress of an epoch in progress
        self.stop_requested = False
        self._running_stats = [buffer for module in self.net.modules()
                               if isinstance(module, nn.modules.batchnorm._BatchNorm) for buffer in module.buffers()]

    @property
    def lr(self) -> float:
        return max(group["lr"] for group in self.optimizer.param_groups)

    # ---- training -------------------------------------------------------------------------------------------

    def train_network(self, loader, epoch: int, show_progress: bool = True) -> tuple[float, float] | None:
        """One epoch; returns the mean loss and accuracy (percent), or None when a stop was requested.

        An interrupted epoch keeps its progress in ``self.progress`` (saved with the checkpoint), and the next
        call for the same epoch skips the batches already done.
        """
        self.net.train()
        if self.progress is None or self.progress.epoch != epoch:
            if _is_plateau(self.scheduler):
                self.scheduler.step(self.last_eer)
            self.progress = EpochProgress(epoch)
        progress = self.progress
        loader.batch_sampler.start_at(progress.batches)
        bad_in_a_row, utterances, started = 0, 0, time.time()
        bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", disable=not (show_progress and distributed.is_main()), dynamic_ncols=True,
                   file=sys.stdout, initial=progress.batches, total=progress.batches + len(loader))
        for waves, labels, sizes in bar:
            waves = waves.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            running_stats = [buffer.clone() for buffer in self._running_stats]
            with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                loss, accuracy = self.model(waves, labels, len(sizes))
            # The one host synchronisation of the step: the values we log (and check before applying the step).
            loss_value, accuracy_value = torch.stack([loss.detach(), accuracy.detach().to(loss.dtype)]).tolist()
            progress.batches += 1
            if math.isfinite(loss_value):
                bad_in_a_row = 0
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                progress.add(loss_value, accuracy_value)
                utterances += waves.shape[0]
                bar.set_postfix(loss=f"{progress.mean_loss:.4f}", acc=f"{progress.mean_accuracy:.2f}%",
                                utt_s=f"{utterances / (time.time() - started):.1f}")
            else:
                bad_in_a_row += 1
                torch._foreach_copy_(self._running_stats, running_stats)   # a bad batch must not poison BatchNorm
                print(f"WARNING: epoch {epoch}, batch {progress.batches - 1}: non-finite loss ({loss_value}); "
                      f"step skipped", file=sys.stderr)
                if bad_in_a_row >= self.max_bad_steps:
                    raise SpeakerNetError(f"epoch {epoch}: {bad_in_a_row} non-finite losses in a row (last at batch "
                                          f"{progress.batches - 1}); stopping. The last good checkpoint is kept; "
                                          f"try a lower --lr")
            if self.stop_requested:
                bar.close()
                return None
        bar.close()
        if progress.steps == 0:
            raise SpeakerNetError(f"epoch {epoch}: no training step was made (empty loader or only bad batches)")
        if not _is_plateau(self.scheduler):
            self.scheduler.step()
        self.progress = None
        return progress.mean_loss, progress.mean_accuracy

    # ---- evaluation -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def embed_files(self, files: list[str], test_path: str, eval_frames: int, num_workers: int = 0,
                    files_per_batch: int | None = None, show_progress: bool = True,
                    precision: str = "fp32") -> torch.Tensor:
        """``(files, crops, nOut)`` embeddings (crops = 10, or 1 for whole files with ``eval_frames == 0``).

        Several files per forward pass (``files_per_batch``, default 1 on the CPU and 32 on a GPU), loaded by a
        DataLoader with ``num_workers`` workers, the network in ``precision``; see
        :func:`evaluation.extract_embeddings`.
        """
        self.net.eval()
        ranks, rank = distributed.world_size(), distributed.rank()
        # under torch.distributed every rank embeds every ranks-th file and all of them receive all embeddings
        mine = evaluation.extract_embeddings(self.net.__S__, files[rank::ranks], test_path, eval_frames,
                                             self.device, num_workers, files_per_batch, show_progress,
                                             precision=precision)
        if ranks == 1:
            return mine
        return distributed.gather_strided(mine, len(files), self.device)

    def score_trials(self, embeddings: torch.Tensor, enroll: torch.Tensor, test: torch.Tensor,
                     scoring: str = "crops", chunk: int | None = None) -> torch.Tensor:
        """Scores of the trials ``(enroll[i], test[i])`` (file indices into ``embeddings``), on the CPU.

        ``crops`` (the original's): minus the mean Euclidean distance over all crop pairs of the two files;
        ``cosine``: the cosine of the crop-averaged embeddings. Crops are L2-normalised when the loss says so.
        """
        scorer = evaluation.TrialScorer(embeddings, scoring, self.net.test_normalize, self.device, chunk)
        return scorer(enroll, test)

    def evaluate_lists(self, trial_lists: list[list[Trial]], test_path: str, eval_frames: int, num_workers: int = 0,
                       files_per_batch: int | None = None, precision: str = "fp32", scoring: str = "crops",
                       score_norm: str = "none",
                       cohort: tuple[list[str], np.ndarray] | None = None, cohort_size: int = 200,
                       show_progress: bool = True) -> tuple[evaluation.EmbeddingStore, list[np.ndarray]]:
        """Scores of several trial lists (each in list order); a file shared by lists is embedded once.

        ``score_norm="asnorm"`` needs ``cohort``: the files (full paths) and speaker labels of the cohort, whose
        per-speaker mean embeddings are the cohort (:func:`evaluation.speaker_means`), and uses the
        ``cohort_size`` top cohort scores of each file. Returns the embedding store and the scores per list.
        """
        if score_norm not in evaluation.SCORE_NORMS:
            raise SpeakerNetError(f"--score_norm {score_norm!r}: choose one of {', '.join(evaluation.SCORE_NORMS)}")
        files = sorted({path for trials in trial_lists for trial in trials for path in (trial.enroll, trial.test)})
        store = evaluation.EmbeddingStore(files, self.embed_files(files, test_path, eval_frames, num_workers,
                                                                  files_per_batch, show_progress, precision))
        scorer = evaluation.TrialScorer(store.embeddings, scoring, self.net.test_normalize, self.device)
        pairs = [(store.indices(t.enroll for t in trials), store.indices(t.test for t in trials))
                 for trials in trial_lists]
        results = [scorer(enroll, test) for enroll, test in pairs]
        if score_norm == "asnorm":
            if cohort is None:
                raise SpeakerNetError("--score_norm asnorm needs a cohort (--train_list)")
            cohort_files, cohort_labels = cohort
            cohort_embeddings = self.embed_files(list(cohort_files), "", eval_frames, num_workers, files_per_batch,
                                                 show_progress, precision)
            _, speakers = np.unique(np.asarray(cohort_labels), return_inverse=True)
            means = evaluation.speaker_means(cohort_embeddings, speakers, self.net.test_normalize)
            mean, std = evaluation.cohort_statistics(scorer, torch.arange(len(files)), means, cohort_size)
            results = [evaluation.as_norm(scores, enroll, test, mean, std)
                       for scores, (enroll, test) in zip(results, pairs)]
        return store, [scores.numpy() for scores in results]

    def evaluate_trials(self, trials: list[Trial], test_path: str, eval_frames: int, num_workers: int = 0,
                        show_progress: bool = True, **options) -> np.ndarray:
        """Scores of ``trials`` in list order; every file is embedded once (options: see :meth:`evaluate_lists`)."""
        return self.evaluate_lists([trials], test_path, eval_frames, num_workers, show_progress=show_progress,
                                   **options)[1][0]

    # ---- checkpoints ----------------------------------------------------------------------------------------

    def save(self, path: str, epoch: int) -> None:
        atomic.save_torch({
            "model_state_dict": self.net.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": self.scheduler.state_dict(),
            "scaler_state_dict": self.scaler.state_dict(),
            "epoch": epoch,
            "last_eer": self.last_eer,
            "progress": asdict(self.progress) if self.progress is not None else None,
            "torch_rng_state": torch.get_rng_state(),
            "cuda_rng_state": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }, path)

    def load_weights(self, path: str) -> dict:
        """Weights only (``--initial_model``); returns the key report."""
        return load_model_state(self.net, read_checkpoint(path)["model_state_dict"], path)

    def resume(self, path: str, epoch_from_name: int) -> None:
        """Weights, optimizer, scheduler, epoch and random state, as far as the file has them."""
        checkpoint = read_checkpoint(path)
        load_model_state(self.net, checkpoint["model_state_dict"], path)
        if "optimizer_state_dict" in checkpoint:
            self.optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        if "scheduler_state_dict" in checkpoint:
            self.scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
        if checkpoint.get("scaler_state_dict"):
            self.scaler.load_state_dict(checkpoint["scaler_state_dict"])
        self.epoch = int(checkpoint.get("epoch", epoch_from_name))
        self.last_eer = float(checkpoint.get("last_eer", self.last_eer))
        self.progress = EpochProgress(**checkpoint["progress"]) if checkpoint.get("progress") else None
        if "torch_rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["torch_rng_state"])
        if checkpoint.get("cuda_rng_state") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng_state"])


def checkpoint_path(model_dir: str, epoch: int) -> str:
    return os.path.join(model_dir, CHECKPOINT_PATTERN % epoch)


__all__ = ["SpeakerNet", "ModelTrainer", "read_checkpoint", "load_model_state", "latest_checkpoint",
           "checkpoint_path", "NUM_EVAL"]
