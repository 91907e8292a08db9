"""Tar shards: training data as a few large files read front to back (VoxCeleb2 scale, network storage).

Writing (:func:`make_shards`, ``dataprep.py --make_shards``): the utterances of a training list go into tar files
in the WebDataset convention: ``<key>.<ext>`` members grouped by key, the audio as its original bytes (or
re-encoded as 16-kHz mono FLAC) and ``<key>.json`` (speaker, duration, the list's path). Shards are
speaker-grouped: the speakers are shuffled with a seed and each speaker's utterances follow one another, a shard
closing before a speaker that would overflow it (a speaker with more than ``shard_size`` utterances fills shards
of its own), so a stream meets each speaker's utterances together. ``manifest.json`` beside the shards says what
they hold (utterances, speakers per shard, durations, a SHA-256 per shard).

Reading (:class:`ShardStream`): an ``IterableDataset`` of ready training batches that reads its shards
sequentially. Each epoch the shards are shuffled with (seed, epoch) and dealt to the ranks, then to the rank's
DataLoader workers. A worker cuts each speaker's run of utterances as :class:`~spknet.data.sampler.GroupBatchSampler`
cuts a speaker (shuffled, at most ``max_seg_per_spk``, one group size per run drawn from ``group_sizes``), keeps
the groups in a pool of speakers, and makes each batch of one group of ``batch_size`` distinct speakers drawn at
random from a pool of at least :data:`POOL_FACTOR` x ``batch_size`` speakers (fewer when its shards hold fewer).
An utterance is cropped (the one reader's :func:`~spknet.data.audio.random_crop` on its bytes) only when its
batch is made. Every rank makes the same number of batches per epoch, estimated from the manifest (its
utterances / group size / batch size / ranks): a worker that runs out of shards reads them again, one that
reaches its share stops, so ranks stop together.
"""

import hashlib
import io
import json
import os
import posixpath
import re
import tarfile
from dataclasses import dataclass

import numpy as np
import torch

from spknet import atomic
from spknet.data.audio import (
    ORIGINAL,
    AudioPipeline,
    max_audio_samples,
    open_audio,
    open_audio_bytes,
    random_crop,
    read_audio,
)
from spknet.data.lists import check_files_exist, read_train_list
from spknet.errors import SpeakerNetError
from spknet.files import file_digest

MANIFEST = "manifest.json"
FORMAT = "spknet-shards"
VERSION = 1
SHARD_NAME = "shard-{:06d}.tar"
AUDIO_FORMATS = ("original", "flac")
POOL_FACTOR = 2          # a worker's pool of speakers with groups: this many times the batch (distinct draws)


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Utterance:
    speaker: str
    path: str           # full path
    relative: str       # as the list gives it
    seconds: float


def _plan_shards(speakers: dict[str, list[_Utterance]], shard_size: int, seed: int) -> list[list[_Utterance]]:
    """Speakers in a seeded order, each speaker's utterances together; a shard closes before a speaker that would
    overflow it, and a speaker longer than a shard is cut into full shards."""
    order = np.random.default_rng(seed).permutation(sorted(speakers))
    shards, current = [], []
    for speaker in order:
        utterances = speakers[str(speaker)]
        if current and len(current) + len(utterances) > shard_size:
            shards.append(current)
            current = []
        for start in range(0, len(utterances), shard_size):
            chunk = utterances[start:start + shard_size]
            if len(chunk) == shard_size:
                shards.append(chunk)
            else:
                current += chunk
    if current:
        shards.append(current)
    return shards


def _audio_member(utterance: _Utterance, audio_format: str) -> tuple[str, bytes]:
    """The audio member's extension and bytes: the file as it is, or its samples as 16-kHz mono FLAC."""
    if audio_format == "original":
        extension = os.path.splitext(utterance.path)[1].lstrip(".").lower() or "wav"
        with open(utterance.path, "rb") as handle:
            return extension, handle.read()
    import soundfile as sf
    buffer = io.BytesIO()
    sf.write(buffer, read_audio(utterance.path, AudioPipeline(scale="float")), 16000, format="FLAC", subtype="PCM_16")
    return "flac", buffer.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644      # fixed metadata: the same input, the same bytes
    tar.addfile(info, io.BytesIO(data))


def _write_shard(path: str, utterances: list[_Utterance], first_key: int, audio_format: str) -> dict:
    """One shard (atomically) and its manifest entry."""
    with atomic.atomic_open(path, "wb") as handle:
        with tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for number, utterance in enumerate(utterances, start=first_key):
                key = f"{number:09d}"
                extension, data = _audio_member(utterance, audio_format)
                _add_member(tar, f"{key}.{extension}", data)
                meta = {"speaker": utterance.speaker, "duration": round(utterance.seconds, 4),
                        "path": utterance.relative}
                _add_member(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
    counts: dict[str, int] = {}
    for utterance in utterances:
        counts[utterance.speaker] = counts.get(utterance.speaker, 0) + 1
    return {"name": os.path.basename(path), "utterances": len(utterances), "bytes": os.path.getsize(path),
            "sha256": file_digest(path), "duration": round(sum(u.seconds for u in utterances), 3),
            "speakers": counts}


def make_shards(train_list: str, train_path: str, shard_dir: str, shard_size: int = 1000, seed: int = 0,
                audio_format: str = "original") -> dict:
    """Write the training list's utterances as speaker-grouped tar shards and ``manifest.json`` in ``shard_dir``.

    Every file is opened with the one reader first (its duration, and a bad file fails here), so a bad input
    writes nothing. Returns the manifest.
    """
    if shard_size < 1:
        raise SpeakerNetError(f"--shard_size must be at least 1, got {shard_size}")
    if audio_format not in AUDIO_FORMATS:
        raise SpeakerNetError(f"--shard_audio must be one of {', '.join(AUDIO_FORMATS)}, got {audio_format!r}")
    listed = read_train_list(train_list, train_path)
    check_files_exist(listed.files, train_list)
    relative = [os.path.relpath(path, train_path) for path in listed.files]
    speakers: dict[str, list[_Utterance]] = {}
    for path, rel, label in zip(listed.files, relative, listed.labels):
        with open_audio(path) as audio:
            seconds = audio.frames / 16000
        name = listed.speakers[label]
        speakers.setdefault(name, []).append(_Utterance(name, path, rel, seconds))
    os.makedirs(shard_dir, exist_ok=True)
    entries, key = [], 0
    for number, utterances in enumerate(_plan_shards(speakers, shard_size, seed)):
        entries.append(_write_shard(os.path.join(shard_dir, SHARD_NAME.format(number)), utterances, key,
                                    audio_format))
        key += len(utterances)
    manifest = {"format": FORMAT, "version": VERSION, "shard_size": shard_size, "seed": seed, "audio": audio_format,
                "utterances": key, "duration": round(sum(entry["duration"] for entry in entries), 3),
                "speakers": sorted(speakers), "shards": entries}
    atomic.write_text(os.path.join(shard_dir, MANIFEST), json.dumps(manifest, indent=1) + "\n")
    return manifest


# ----------------------------------------------------------------------------------------------------------------
# Finding the shards of a spec
# ----------------------------------------------------------------------------------------------------------------

def _is_local(url: str) -> bool:
    return not url.startswith("pipe:") and "://" not in url


def _open_url(url: str, allow_pipes: bool):
    """A binary stream of ``url``: a local file, ``pipe:COMMAND`` (with ``allow_pipes`` only: it runs the command),
    or a URL that ``webdataset.gopen`` opens (http(s) through curl, ...)."""
    if _is_local(url):
        try:
            return open(url, "rb")
        except OSError as error:
            raise SpeakerNetError(f"{url}: cannot open shard ({error.strerror})") from None
    if url.startswith("pipe:") and not allow_pipes:
        raise SpeakerNetError(f"{url}: a pipe: shard runs that shell command; pass --allow_pipes to run it")
    from webdataset.gopen import gopen
    try:
        return gopen(url, "rb")
    except Exception as error:      # webdataset raises what its handlers raise
        raise SpeakerNetError(f"{url}: cannot open shard ({error})") from None


def _read_manifest(url: str, allow_pipes: bool) -> dict:
    try:
        with _open_url(url, allow_pipes) as handle:
            manifest = json.loads(handle.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise SpeakerNetError(f"{url}: not a shard manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "shards" not in manifest:
        raise SpeakerNetError(f"{url}: not a shard manifest (no '{FORMAT}' format entry)")
    if manifest.get("version", 0) > VERSION:
        raise SpeakerNetError(f"{url}: manifest version {manifest['version']} is newer than this SpeakerNet's")
    return manifest


_SHARD_FILE = re.compile(r"[^/\s'\"]+\.tar")


@dataclass(frozen=True)
class ShardSet:
    """The shards of a spec: their URLs, their manifest entries, and the manifest's own URL."""
    urls: list[str]
    entries: list[dict]
    manifest: str

    @property
    def speakers(self) -> list[str]:
        """The class names (label order): the speakers of these shards, sorted."""
        return sorted({name for entry in self.entries for name in entry["speakers"]})


def resolve_shards(spec: str, allow_pipes: bool = False) -> ShardSet:
    """``--train_shards``: a manifest (``.../manifest.json``: all its shards) or a brace pattern of shards
    (``dir/shard-{000000..000123}.tar``, whose manifest is ``manifest.json`` beside them), each shard checked
    against its manifest entry (local files: present, of the size recorded)."""
    from braceexpand import braceexpand
    if not spec:
        raise SpeakerNetError("--train_shards: no shards given")
    if spec.endswith(".json"):
        manifest_url = spec
        manifest = _read_manifest(manifest_url, allow_pipes)
        base = posixpath.dirname(spec)
        urls = [posixpath.join(base, entry["name"]) if base else entry["name"] for entry in manifest["shards"]]
    else:
        urls = list(braceexpand(spec))
        local = [url for url in urls if _is_local(url)]
        if local and not any(os.path.isfile(url) for url in local):
            raise SpeakerNetError(f"--train_shards {spec}: no shard matches (none of the {len(urls)} expanded "
                                  f"paths exists, e.g. {urls[0]})")
        found = _SHARD_FILE.findall(urls[0])
        if not found:
            raise SpeakerNetError(f"--train_shards {spec}: not a .tar shard pattern or a manifest .json")
        start = urls[0].rfind(found[-1])
        manifest_url = urls[0][:start] + MANIFEST + urls[0][start + len(found[-1]):]
        manifest = _read_manifest(manifest_url, allow_pipes)
    by_name = {entry["name"]: entry for entry in manifest["shards"]}
    entries = []
    for url in urls:
        names = _SHARD_FILE.findall(url)
        entry = by_name.get(names[-1]) if names else None
        if entry is None:
            raise SpeakerNetError(f"{url}: not among the shards of its manifest {manifest_url}")
        if _is_local(url):
            if not os.path.isfile(url):
                raise SpeakerNetError(f"{url}: shard not found (listed by {manifest_url})")
            size = os.path.getsize(url)
            if size != entry["bytes"]:
                raise SpeakerNetError(f"{url}: {size} bytes, its manifest {manifest_url} says {entry['bytes']}: the "
                                      f"shard is truncated or was changed after the manifest was written")
        entries.append(entry)
    if not entries:
        raise SpeakerNetError(f"--train_shards {spec}: the manifest lists no shards")
    return ShardSet(urls, entries, manifest_url)


# ----------------------------------------------------------------------------------------------------------------
# Reading one shard
# ----------------------------------------------------------------------------------------------------------------

class _ShardReader:
    """A shard's byte stream as :mod:`tarfile`'s random-access mode reads it: front to back, seeking forward only
    (by reading on), counting and (``hashing``) hashing every byte that passes, so the shard's size and SHA-256
    come without a second read. A member's data is one read call, not tarfile's stream mode's 10-KiB blocks."""

    def __init__(self, stream, hashing: bool = True):
        self.stream, self.digest, self.count = stream, hashlib.sha256() if hashing else None, 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read() if size is None or size < 0 else self.stream.read(size)
        if self.digest is not None:
            self.digest.update(data)
        self.count += len(data)
        return data

    def tell(self) -> int:
        return self.count

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset + (self.count if whence == io.SEEK_CUR else 0)
        if whence == io.SEEK_END or target < self.count:
            raise io.UnsupportedOperation("a shard is read front to back")
        while self.count < target and self.read(min(target - self.count, 1 << 20)):
            pass
        return self.count

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


@dataclass
class Sample:
    """One utterance of a shard: its speaker, audio bytes and a name for messages (``shard:key.ext``)."""
    speaker: str
    audio: bytes
    name: str


def _sample(url: str, key: str, members: dict[str, bytes]) -> Sample:
    if "json" not in members:
        raise SpeakerNetError(f"{url}: member {key}.json missing (the key's members: {sorted(members)})")
    audio = [ext for ext in members if ext != "json"]
    if len(audio) != 1:
        raise SpeakerNetError(f"{url}: key {key} has {len(audio)} audio members, expected 1")
    try:
        speaker = json.loads(members["json"])["speaker"]
    except (ValueError, KeyError, TypeError) as error:
        raise SpeakerNetError(f"{url}: member {key}.json: no speaker ({error})") from None
    return Sample(str(speaker), members[audio[0]], f"{url}:{key}.{audio[0]}")


def _member_data(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    if member.sparse is not None:       # GNU sparse members: tarfile puts their holes back
        return tar.extractfile(member).read()
    tar.fileobj.seek(member.offset_data)
    return tar.fileobj.read(member.size)


def read_shard(url: str, entry: dict | None = None, allow_pipes: bool = False, check_hash: bool = True):
    """The samples of one shard, read front to back; a damaged tar, or (given its manifest ``entry``) another
    count of utterances or bytes, or (``check_hash``) another SHA-256 than the manifest's, is an error naming the
    shard (and the member)."""
    key, members, last, count = None, {}, "(start of the shard)", 0
    with _open_url(url, allow_pipes) as raw:
        stream = _ShardReader(raw, check_hash and entry is not None)
        try:
            with tarfile.open(fileobj=stream, mode="r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    base = posixpath.basename(member.name)
                    name_key, _, extension = base.partition(".")
                    name_key = posixpath.join(posixpath.dirname(member.name), name_key)
                    data = _member_data(tar, member)
                    if len(data) != member.size:
                        raise tarfile.ReadError(f"member {member.name} has {len(data)} of its {member.size} bytes")
                    if name_key != key and members:
                        yield _sample(url, key, members)
                        count += 1
                        members = {}
                    key, last = name_key, member.name
                    members[extension.lower()] = data
        except (tarfile.TarError, EOFError, OSError) as error:
            raise SpeakerNetError(f"{url}: damaged or truncated shard: it broke after member {last} ({error})") \
                from None
        if members:
            yield _sample(url, key, members)
            count += 1
        if entry is not None:
            stream.drain()
            if count != entry["utterances"]:
                raise SpeakerNetError(f"{url}: {count} utterances, its manifest says {entry['utterances']}")
            if stream.count != entry["bytes"]:
                raise SpeakerNetError(f"{url}: {stream.count} bytes, its manifest says {entry['bytes']}")
            if stream.digest is not None and stream.digest.hexdigest() != entry["sha256"]:
                raise SpeakerNetError(f"{url}: SHA-256 differs from its manifest's: the shard was changed")


# ----------------------------------------------------------------------------------------------------------------
# Streaming batches
# ----------------------------------------------------------------------------------------------------------------

def _speaker_runs(samples):
    """Consecutive samples of one speaker, as lists."""
    run = []
    for sample in samples:
        if run and sample.speaker != run[0].speaker:
            yield run
            run = []
        run.append(sample)
    if run:
        yield run


class ShardStream(torch.utils.data.IterableDataset):
    """Training batches ``(waves, labels, sizes)`` (as :func:`~spknet.data.datasets.collate_groups` makes them)
    streamed from tar shards; see the module's description. It is the loader's dataset and its sampler at once:
    :meth:`set_epoch` and :meth:`start_at` position it, ``len()`` is the batches left in the epoch.

    Determinism and resuming: the batches of an epoch depend only on (seed, epoch, rank, ranks, loader workers)
    and the shards, so :meth:`start_at` ``k`` replays the epoch's stream and drops its first ``k`` batches without
    cropping them: a resumed epoch sees exactly the batches it had not yet seen (no utterance repeated or skipped)
    when it runs with the same number of ranks and workers. With another number of either, the shards are dealt
    otherwise and the remaining batches come from another stream: in that epoch up to ``k`` batches' utterances
    may be heard twice and as many not at all (the next epochs are whole again).
    """

    def __init__(self, shards: ShardSet, group_sizes: tuple[int, ...], batch_size: int, max_frames: int,
                 max_seg_per_spk: int, seed: int = 0, rank: int = 0, world_size: int = 1, workers: int = 0,
                 pipeline: AudioPipeline = ORIGINAL, augmenter=None, allow_pipes: bool = False):
        self.shards, self.group_sizes, self.batch_size = shards, tuple(group_sizes), batch_size
        self.max_frames, self.max_seg_per_spk, self.seed = max_frames, max_seg_per_spk, seed
        self.rank, self.world_size, self.workers = rank, world_size, max(workers, 1)
        self.pipeline, self.augmenter, self.allow_pipes = pipeline, augmenter, allow_pipes
        self.speakers = shards.speakers
        self.label_of = {name: label for label, name in enumerate(self.speakers)}
        if len(shards.urls) < world_size:
            raise SpeakerNetError(f"{len(shards.urls)} shard(s) for {world_size} ranks: every rank needs a shard")
        self.per_epoch = self._batches_per_epoch()
        # (epoch, first batch) in shared memory: the loader's persistent workers hold copies of this object, and
        # read the epoch and start that the training process sets here
        self._position = torch.tensor([1, 0], dtype=torch.long).share_memory_()
        self._hashed: set[int] = set()      # shards whose SHA-256 this process has checked
        self._check_fillable()

    @property
    def epoch(self) -> int:
        return int(self._position[0])

    @property
    def first_batch(self) -> int:
        return int(self._position[1])

    def _batches_per_epoch(self) -> int:
        """Batches per rank per epoch: the groups the manifest's speakers make (at most ``max_seg_per_spk``
        utterances each, the group size's expectation over ``group_sizes``), in batches, shared by the ranks."""
        counts: dict[str, int] = {}
        for entry in self.shards.entries:
            for name, count in entry["speakers"].items():
                counts[name] = counts.get(name, 0) + count
        groups = sum(np.mean([min(count, self.max_seg_per_spk) // size for size in self.group_sizes])
                     for count in counts.values())
        return max(1, int(groups) // (self.batch_size * self.world_size))

    def _check_fillable(self) -> None:
        for rank in range(self.world_size):
            for worker, (_, speakers) in enumerate(self._assignments(rank)):
                if speakers < self.batch_size:
                    raise SpeakerNetError(
                        f"batches of {self.batch_size} groups can never be filled: rank {rank}'s loader worker "
                        f"{worker} reads shards of {speakers} speakers in epoch {self.epoch} (a batch needs "
                        f"{self.batch_size} distinct speakers): use fewer --nDataLoaderThread, ranks or a smaller "
                        f"--batch_size, or larger shards")

    def set_epoch(self, epoch: int) -> None:
        self._position[0], self._position[1] = epoch, 0
        self._check_fillable()

    def start_at(self, batch: int) -> None:
        """Skip this epoch's first ``batch`` batches (resuming an interrupted epoch)."""
        self._position[1] = batch

    def __len__(self) -> int:
        return max(self.per_epoch - self.first_batch, 0)

    # ---- who reads what ---------------------------------------------------------------------------------------

    def _active_workers(self, rank: int) -> int:
        return min(self.workers, len(range(rank, len(self.shards.urls), self.world_size)))

    def _assignments(self, rank: int) -> list[tuple[list[int], int]]:
        """For each active worker of ``rank`` this epoch: its shards (indices) and how many of their speakers can
        make a group."""
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.shards.urls))
        mine = order[rank::self.world_size]
        active = self._active_workers(rank)
        result = []
        for worker in range(active):
            indices = [int(i) for i in mine[worker::active]]
            counts: dict[str, int] = {}
            for i in indices:
                for name, count in self.shards.entries[i]["speakers"].items():
                    counts[name] = counts.get(name, 0) + count
            result.append((indices, sum(count >= min(self.group_sizes) for count in counts.values())))
        return result

    def quota(self, worker: int, active: int) -> int:
        """Batches worker ``worker`` of ``active`` makes this epoch (the loader takes them in turn)."""
        return self.per_epoch // active + (worker < self.per_epoch % active)

    # ---- the stream of one worker -------------------------------------------------------------------------------

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.workers:
            raise SpeakerNetError(f"the shard stream was built for {self.workers} loader workers, runs in "
                                  f"{info.num_workers}")
        assignments = self._assignments(self.rank)
        active = len(assignments)
        if worker >= active:
            return
        # The loader takes the workers' batches in turn from worker 0: batch i of the epoch is made by role i % active,
        # so a start at batch k gives worker w the role (w + k) % active.
        role = (worker + self.first_batch) % active
        shards, speakers = assignments[role]
        skip = len(range(role, self.first_batch, active))
        yield from self.worker_batches(shards, speakers, role, self.quota(role, active), skip)

    def _runs(self, shards: list[int], rng: np.random.Generator):
        """This worker's speaker runs, its shards read again (in another order) each time they run out; None
        marks the end of each pass."""
        while True:
            for index in rng.permutation(shards):
                index = int(index)
                # its SHA-256 the first time this process reads it (a changed shard is caught on the first pass of
                # a run or a resume); its size and count of utterances on every pass
                yield from _speaker_runs(read_shard(self.shards.urls[index], self.shards.entries[index],
                                                    self.allow_pipes, check_hash=index not in self._hashed))
                self._hashed.add(index)
            yield None

    def _groups_of(self, run: list[Sample], rng: np.random.Generator) -> list[tuple]:
        """A speaker's run cut as the file sampler cuts a speaker: shuffled, at most ``max_seg_per_spk``
        utterances, groups of one size drawn from ``group_sizes``; each group with its crop seed."""
        size = int(rng.choice(self.group_sizes))
        kept = [run[i] for i in rng.permutation(len(run))[:self.max_seg_per_spk]]
        count = len(kept) // size * size
        seeds = rng.integers(0, 2 ** 63 - 1, size=max(count // size, 1))
        return [(tuple(kept[start:start + size]), int(seeds[start // size])) for start in range(0, count, size)]

    def worker_batches(self, shards: list[int], speakers: int, worker: int, quota: int, skip: int = 0):
        """``quota`` batches from ``shards`` (the first ``skip`` counted, not cropped). A batch takes one group of
        each of ``batch_size`` speakers drawn from the pool (in proportion to their groups left, so that the
        pool empties evenly), which is refilled to ``pool_size`` speakers from the
        stream, except at the end of a pass over the shards, where the pool is drawn down to ``batch_size``
        speakers before the next pass starts."""
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        pool_size = min(POOL_FACTOR * self.batch_size, speakers)
        pool: dict[str, list] = {}           # speaker -> its waiting groups (insertion order: determinism)
        runs = self._runs(shards, rng)
        made, needed = 0, pool_size
        while made < quota:
            while len(pool) < needed:
                run = next(runs)
                if run is None:     # a pass ends: its groups are used up (while batches fill) before the next
                    needed = self.batch_size
                    continue
                needed = pool_size
                pool.setdefault(run[0].speaker, []).extend(self._groups_of(run, rng))
                if not pool[run[0].speaker]:
                    del pool[run[0].speaker]
            names = list(pool)
            left = np.array([len(pool[name]) for name in names], dtype=np.float64)
            drawn = rng.choice(len(names), self.batch_size, replace=False, p=left / left.sum())
            chosen = [names[i] for i in sorted(drawn)]
            groups = [pool[name].pop(0) for name in chosen]
            for name in chosen:
                if not pool[name]:
                    del pool[name]
            if made >= skip:
                yield self._batch(groups)
            made += 1

    def _batch(self, groups) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sizes = [len(utterances) for utterances, _ in groups]
        waves = np.empty((sum(sizes), max_audio_samples(self.max_frames)), dtype=np.float32)
        labels, row = [], 0
        for utterances, crop_seed in groups:
            rng = np.random.default_rng(crop_seed)
            group = waves[row:row + len(utterances)]        # crops written in place: no concatenation
            for index, sample in enumerate(utterances):
                with open_audio_bytes(sample.audio, sample.name) as audio:
                    group[index] = random_crop(audio, self.max_frames, rng, self.pipeline)[0]
            if self.augmenter is not None:       # the augmenter mixes in the int16 range
                for index, wave in enumerate(group):
                    group[index] = self.pipeline.from_int16_scale(
                        self.augmenter(self.pipeline.to_int16_scale(wave), rng))
            labels += [self.label_of[utterances[0].speaker]] * len(utterances)
            row += len(utterances)
        return torch.from_numpy(waves), torch.tensor(labels, dtype=torch.long), torch.tensor(sizes, dtype=torch.long)


def describe_rate(manifest: dict, seconds: float) -> str:
    """A summary line of a written manifest."""
    return (f"wrote {len(manifest['shards'])} shard(s): {manifest['utterances']} utterances of "
            f"{len(manifest['speakers'])} speakers ({manifest['duration'] / 3600:.2f} h) in {seconds:.1f} s")


__all__ = ["MANIFEST", "POOL_FACTOR", "Sample", "ShardSet", "ShardStream", "describe_rate", "make_shards",
           "read_shard", "resolve_shards"]
