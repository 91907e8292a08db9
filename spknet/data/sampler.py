"""The batch sampler: groups of one speaker's utterances, packed into batches of distinct speakers."""

from dataclasses import dataclass

import numpy as np
import torch

from spknet.errors import SpeakerNetError


@dataclass(frozen=True)
class Group:
    """Utterances of one speaker that go through the loss together; ``crop_seed`` fixes their random crops."""
    label: int
    files: tuple[int, ...]
    crop_seed: int

class GroupBatchSampler(torch.utils.data.Sampler):
    """Batches of ``batch_size`` groups with distinct speakers.

    Each epoch every speaker draws a group size from ``group_sizes`` ((2,) balanced, (2, 3) the original's
    imbalanced sampler, (1,) classification), its utterances (at most ``max_seg_per_spk``) are shuffled and cut
    into groups of that size, and the shuffled groups are packed into batches. A group whose speaker is already in
    the batch being filled waits for the next batch (the original dropped it). The order depends only on
    ``seed`` and the epoch, so a resumed run sees the same batches. Under torch.distributed the batches are
    global (``batch_size`` groups per rank, distinct speakers across all ranks) and each rank takes its slice:
    the shards are disjoint and equally long, and k ranks with ``batch_size`` B see exactly the batches of one
    process with ``batch_size`` k*B.

    ``copies`` > 1 takes a :func:`speed_perturbed` list (``copies`` blocks of the recorded list, block k's labels
    shifted by k * speakers) and keeps the epoch as long as without it, as WeSpeaker does: each epoch, every
    speaker's utterances (at most ``max_seg_per_spk``, counted over all speeds) are shuffled and dealt in turn to
    its ``copies`` classes, from a random first one, so each utterance is heard once, at one speed, and the
    classes of a speaker get equal shares (within one). Each class then draws its group size and is cut into
    groups as a speaker is.
    """

    def __init__(self, labels: np.ndarray, group_sizes: tuple[int, ...], batch_size: int, max_seg_per_spk: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1, copies: int = 1):
        self.group_sizes = tuple(group_sizes)
        self.batch_size = batch_size
        self.max_seg_per_spk = max_seg_per_spk
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.copies = copies
        self.recorded = len(labels) // copies          # entries of one block
        self.speakers = int(labels.max()) // copies + 1 if copies > 1 else 0
        if copies > 1 and not np.array_equal(
                labels, np.concatenate([labels[:self.recorded] + k * self.speakers for k in range(copies)])):
            raise ValueError(f"labels are not {copies} speed blocks of one list (see speed_perturbed)")
        recorded = labels[:self.recorded]
        order = np.argsort(recorded, kind="stable")
        boundaries = np.flatnonzero(np.diff(recorded[order])) + 1
        self.files_by_speaker = [(int(recorded[chunk[0]]), chunk) for chunk in np.split(order, boundaries)]
        self._check_fillable()
        self.epoch = 0
        self._batches = None
        self.first_batch = 0

    def _usable_classes(self, files: int, needed: int) -> int:
        """Classes of one speaker with ``needed`` utterances in every epoch (its share of the dealt ones)."""
        kept = min(files, self.max_seg_per_spk)
        share, extra = divmod(kept, self.copies)
        return self.copies if share >= needed else extra if share + 1 >= needed else 0

    def _check_fillable(self):
        needed = min(self.group_sizes)
        usable = sum(self._usable_classes(len(files), needed) for _, files in self.files_by_speaker)
        if usable < self.batch_size * self.world_size:
            raise SpeakerNetError(
                f"batches of {self.batch_size} groups can never be filled: a batch needs {self.batch_size} distinct "
                f"{'classes' if self.copies > 1 else 'speakers'}{' per rank' if self.world_size > 1 else ''} with at "
                f"least {needed} utterance(s) each, and the training list has {usable}"
                f"{' (speaker x speed classes, each with its share of its speaker)' if self.copies > 1 else ''}")

    def set_epoch(self, epoch: int):
        if epoch != self.epoch:
            self.epoch, self._batches = epoch, None
        self.first_batch = 0

    def start_at(self, batch: int):
        """Skip this epoch's first ``batch`` batches (resuming an interrupted epoch)."""
        self.first_batch = batch

    def _make_groups(self, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
        if self.copies > 1:
            return self._make_perturbed_groups(rng)
        groups = []
        for label, files in self.files_by_speaker:
            size = int(rng.choice(self.group_sizes))
            count = min(len(files), self.max_seg_per_spk) // size * size
            for chunk in rng.permutation(files)[:count].reshape(-1, size):
                groups.append((label, chunk))
        return groups

    def _make_perturbed_groups(self, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
        """Each speaker's shuffled utterances dealt to its speed classes, each class cut into groups."""
        groups = []
        for label, files in self.files_by_speaker:
            kept = rng.permutation(files)[:self.max_seg_per_spk]
            blocks = (np.arange(len(kept)) + rng.integers(self.copies)) % self.copies
            for block in range(self.copies):
                entries = kept[blocks == block] + block * self.recorded
                size = int(rng.choice(self.group_sizes))
                count = len(entries) // size * size
                groups += [(label + block * self.speakers, chunk) for chunk in entries[:count].reshape(-1, size)]
        return groups

    def _pack(self, groups, order) -> list[list[int]]:
        global_batch = self.batch_size * self.world_size
        batches, batch, speakers, waiting = [], [], set(), []

        def close_if_full():
            nonlocal batch, speakers, waiting
            while len(batch) == global_batch:
                batches.append(batch)
                batch, speakers, still = [], set(), []
                for index in waiting:
                    if len(batch) < global_batch and groups[index][0] not in speakers:
                        batch.append(index)
                        speakers.add(groups[index][0])
                    else:
                        still.append(index)
                waiting = still

        for index in order:
            if groups[index][0] in speakers:
                waiting.append(index)
                continue
            batch.append(index)
            speakers.add(groups[index][0])
            close_if_full()
        return batches

    def batches(self) -> list[list[Group]]:
        """This epoch's batches for this rank."""
        if self._batches is None:
            rng = np.random.default_rng([self.seed, self.epoch])
            groups = self._make_groups(rng)
            order = rng.permutation(len(groups))
            crop_seeds = rng.integers(0, 2 ** 63 - 1, size=len(groups))
            # Global batches of batch_size groups per rank; this rank takes its own contiguous slice of each.
            mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
            self._batches = [[Group(groups[i][0], tuple(int(f) for f in groups[i][1]), int(crop_seeds[i]))
                              for i in batch[mine]] for batch in self._pack(groups, order)]
        return self._batches

    def __iter__(self):
        return iter(self.batches()[self.first_batch:])

    def __len__(self):
        return max(len(self.batches()) - self.first_batch, 0)
