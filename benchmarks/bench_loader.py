"""Training-loader throughput (issue 6), in one run on data it makes in a temporary folder:

(a) bytes read per training crop by our partial reads (seek + read of the crop) next to a whole-file reader (the
    original's loadWAV decodes the file, then crops), counted by opening every file through a counting file
    object, and cross-checked with the kernel's ``rchar`` counter;
(b) files/s of the training loader (``spknet.training.run.build_loader``: TrainDataset + GroupBatchSampler +
    collate_groups, its DataLoader settings, 2 workers) next to the same DataLoader over a whole-file-reading
    dataset, on the synthetic corpus and on long (20-60 s) files, with a warm and a cold page cache, and ours with
    ``--augment`` (MUSAN-like noise and RIR folders it writes);
(c) those loader rates against what a CPU training step consumes (``bench_train.measure``: ResNetSE34L +
    angleproto) - the loader must keep ahead of the step (target >= 3x);
(d) per loader worker, the crops/s (wall clock) and CPU-ms per crop (user + system time of the loader's worker
    processes, from ``/proc/<pid>/stat``, over the timed epochs) and the bytes read per crop (the workers'
    ``rchar``, and ``read_bytes`` from storage, from ``/proc/<pid>/io``) of the training loader
    (``build_loader``) on VoxCeleb2-like utterances (4-12 s) as wav, flac and m4a (AAC) FILES and as wav, m4a
    and flac (re-encoded from the m4a, ``--shard_audio flac``) tar SHARDS (``make_shards``, read by the
    ``ShardStream`` loader), each with a warm and a cold page cache (the audio files or shards dropped with
    ``posix_fadvise(DONTNEED)`` before every timed epoch) and with and without ``--augment``; crops of
    ``--format_frames`` (350: the original README's mp_balance crops of 3.5 s);
(e) from (d), the loader cores one GPU needs per format for that command (``--gpu_groups`` 200 x 2 crops per
    step) at ``--gpu_steps_per_s`` steps/s: cores = crops needed per second / (1000 / CPU-ms per crop).

    python -m benchmarks.bench_loader
    python -m benchmarks.bench_loader --sections de --gpu_steps_per_s 2.5
    python -m benchmarks.bench_loader --no_cold --no_step
    python -m benchmarks.bench_loader --sections d --profile "m4a files"
"""

import argparse
import cProfile
import os
import pstats
import shutil
import tempfile
import time
from contextlib import contextmanager

import numpy as np
import soundfile as sf
import torch

from spknet.data import ORIGINAL, TrainDataset, load_wav, max_audio_samples, read_train_list
from spknet.data.audio import AudioPipeline, read_audio
from spknet.data.shards import make_shards, resolve_shards
from spknet.data.synthetic import make_corpus
from spknet.specs import DataSpec
from spknet.training.run import build_loader

_RealSoundFile = sf.SoundFile


# ----------------------------------------------------------------------------------------------------------------
# Counting reads
# ----------------------------------------------------------------------------------------------------------------

class ReadCounter:
    def __init__(self):
        self.bytes = 0
        self.calls = 0


class CountingFile:
    """An unbuffered binary file that counts the bytes read through it (what libsndfile asks the OS for)."""

    def __init__(self, path, counter: ReadCounter):
        self._raw = open(path, "rb", buffering=0)
        self.counter = counter
        self.name = str(path)

    def read(self, size=-1):
        data = self._raw.read(size)
        self.counter.bytes += len(data)
        self.counter.calls += 1
        return data

    def readinto(self, buffer):
        count = self._raw.readinto(buffer)
        self.counter.bytes += count
        self.counter.calls += 1
        return count

    def seek(self, offset, whence=0):
        return self._raw.seek(offset, whence)

    def tell(self):
        return self._raw.tell()

    def close(self):
        self._raw.close()


@contextmanager
def counting_reads():
    """Within the block every ``soundfile.SoundFile(path)`` (so also ``soundfile.read`` and our loaders) reads
    through a :class:`CountingFile`; yields the shared :class:`ReadCounter`."""
    counter = ReadCounter()

    class CountingSoundFile(_RealSoundFile):
        def __init__(self, file, *args, **kwargs):
            wrapped = CountingFile(file, counter) if isinstance(file, (str, os.PathLike)) else None
            self._counting = wrapped
            try:
                super().__init__(wrapped or file, *args, **kwargs)
            except Exception:
                if wrapped is not None:
                    wrapped.close()
                raise

        def close(self):
            super().close()
            if self._counting is not None:
                self._counting.close()

    sf.SoundFile = CountingSoundFile
    try:
        yield counter
    finally:
        sf.SoundFile = _RealSoundFile


def rchar() -> int | None:
    """Bytes this process has read through read() system calls (Linux), None elsewhere."""
    try:
        with open("/proc/self/io") as handle:
            for line in handle:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# ----------------------------------------------------------------------------------------------------------------
# The whole-file reference
# ----------------------------------------------------------------------------------------------------------------

def load_whole_then_crop(filename, max_frames, rng):
    """The original's training read: decode the whole file, then take one random crop (int16 scale)."""
    max_audio = max_audio_samples(max_frames)
    audio, _ = sf.read(filename, dtype="int16")
    audio = audio.astype(np.float32)
    if audio.shape[0] <= max_audio:
        audio = ORIGINAL.pad_short(audio, max_audio)
    start = int(rng.random() * (audio.shape[0] - max_audio))
    return audio[None, start:start + max_audio]


class WholeFileDataset(TrainDataset):
    """TrainDataset with the whole-file read (same groups, seeds and output)."""

    def __getitem__(self, group):
        rng = np.random.default_rng(group.crop_seed)
        waves = np.concatenate([load_whole_then_crop(self.source.name(i), self.max_frames, rng) for i in group.files])
        if self.augmenter is not None:
            waves = np.stack([self.augmenter(wave, rng) for wave in waves])
        return waves, group.label


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------

def _write(path, samples):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, np.clip(samples, -32767, 32767).astype(np.int16), 16000, subtype="PCM_16")


def _noise(rng, seconds, level=3000.0):
    """Coloured noise (a two-tap low-pass of white noise) in the int16 range."""
    white = rng.standard_normal(int(seconds * 16000))
    coloured = white + 0.6 * np.concatenate([[0.0], white[:-1]])
    return coloured / coloured.std() * level


def make_long_files(root, speakers, per_speaker, low=20.0, high=60.0, seed=0):
    """``speakers x per_speaker`` files of low-high seconds; returns the train list path."""
    rng = np.random.default_rng(seed)
    lines = []
    for speaker in range(speakers):
        for utterance in range(per_speaker):
            relative = f"id{speaker:05d}/video/{utterance:05d}.wav"
            _write(os.path.join(root, "wav", relative), _noise(rng, rng.uniform(low, high)))
            lines.append(f"id{speaker:05d} {relative}\n")
    list_path = os.path.join(root, "train_list.txt")
    with open(list_path, "w") as handle:
        handle.writelines(lines)
    return list_path


def make_augmentation_folders(root, seed=0):
    """A small MUSAN-shaped folder (5-s segments, as musan_split) and an RIR folder; returns (musan, rirs)."""
    rng = np.random.default_rng(seed)
    musan, rirs = os.path.join(root, "musan_split"), os.path.join(root, "rirs")
    for category, count in (("noise", 12), ("speech", 24), ("music", 12)):
        for index in range(count):
            _write(os.path.join(musan, category, f"src{index % 3}", f"{category}-{index:04d}", "00000.wav"),
                   _noise(rng, 5.0))
    for index in range(12):
        length = int(rng.uniform(0.2, 0.8) * 16000)
        rir = rng.standard_normal(length) * np.exp(-np.arange(length) / (0.05 * 16000))
        rir[0] = 1.0
        os.makedirs(os.path.join(rirs, "smallroom", f"Room{index:03d}"), exist_ok=True)
        sf.write(os.path.join(rirs, "smallroom", f"Room{index:03d}", "rir.wav"), rir / np.abs(rir).max() * 0.9,
                 16000, subtype="FLOAT")
    return musan, rirs


# ----------------------------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------------------------

def bytes_per_crop(files, max_frames, seed=0):
    """Mean and max bytes read per training crop, ours and whole-file, as multiples of the crop's own bytes."""
    crop_bytes = max_audio_samples(max_frames) * 2            # 16-bit samples
    result = {}
    for name, reader in (("partial", lambda path, rng: load_wav(path, max_frames, evalmode=False, rng=rng)),
                         ("whole", lambda path, rng: load_whole_then_crop(path, max_frames, rng))):
        rng = np.random.default_rng(seed)
        per_file = []
        with counting_reads() as counter:
            for path in files:
                before = counter.bytes
                reader(path, rng)
                per_file.append(counter.bytes - before)
        kernel_before = rchar()
        rng = np.random.default_rng(seed)
        for path in files:
            reader(path, rng)
        kernel_after = rchar()
        per_file = np.array(per_file, dtype=np.float64)
        result[name] = {"mean": per_file.mean() / crop_bytes, "max": per_file.max() / crop_bytes,
                        "kib": per_file.mean() / 1024,
                        "rchar": None if kernel_before is None else
                        (kernel_after - kernel_before) / len(files) / crop_bytes}
    result["crop_kib"] = crop_bytes / 1024
    return result


def drop_page_cache(files):
    """Ask the kernel to forget the files' cached pages (works without privileges on files we can open)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)            # dirty pages of freshly written files cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def loader_args(list_path, train_root, frames, batch_size, workers, augment=None):
    musan, rirs = augment or ("", "")
    return DataSpec(train_list=list_path, train_path=train_root, max_frames=frames, batch_size=batch_size,
                    max_seg_per_spk=1000, loader_workers=workers, musan_path=musan, rir_path=rirs,
                    augment=augment is not None)


def files_per_second(args, whole_file=False, min_seconds=3.0, max_epochs=30, cold=False):
    """Utterances/s of the training loader over whole epochs (after one warm-up epoch that starts the workers)."""
    train_list = read_train_list(args.train_list, args.train_path)
    loader, sampler = build_loader(args, ORIGINAL, train_list, 2, torch.device("cpu"))
    if whole_file:      # the same DataLoader settings over the whole-file dataset
        loader = torch.utils.data.DataLoader(
            WholeFileDataset(train_list, args.max_frames, augmenter=loader.dataset.augmenter),
            batch_sampler=sampler, collate_fn=loader.collate_fn, num_workers=loader.num_workers,
            pin_memory=loader.pin_memory, persistent_workers=loader.persistent_workers,
            prefetch_factor=loader.prefetch_factor, worker_init_fn=loader.worker_init_fn,
            generator=torch.Generator().manual_seed(args.seed))
    files = sorted(set(train_list.files))
    sampler.set_epoch(1)
    for _ in loader:
        pass
    utterances, seconds, epoch = 0, 0.0, 1
    while (seconds < min_seconds or epoch < 2) and epoch <= max_epochs:
        epoch += 1
        sampler.set_epoch(epoch)
        if cold:
            drop_page_cache(files)
        started = time.perf_counter()
        for waves, *_ in loader:
            utterances += waves.shape[0]
        seconds += time.perf_counter() - started
    del loader
    return utterances / seconds


# ----------------------------------------------------------------------------------------------------------------
# (d) formats: files and shards, per loader worker
# ----------------------------------------------------------------------------------------------------------------

# Assumed step rate of one A100-class GPU on the README's mp_balance step (ResNetSE34L + SAP, 200 x 2 crops of
# 350 frames, fp16): no GPU was at hand to measure it with ``benchmarks/bench_train_gpu.py``; override it with
# ``--gpu_steps_per_s`` once that script has run on the GPU in question.
ASSUMED_GPU_STEPS_PER_S = 2.5
FLOAT = AudioPipeline(scale="float")
M4A_BIT_RATE = 64000            # VoxCeleb2's AAC is about 64-70 kbit/s
SOURCES = ("wav files", "flac files", "m4a files", "wav shards", "m4a shards", "flac shards from m4a")
FROM_M4A = ("m4a files", "m4a shards", "flac shards from m4a")


def encode_m4a(path: str, samples: np.ndarray, bit_rate: int = M4A_BIT_RATE) -> None:
    """16-kHz mono float samples in [-1, 1] as AAC in an .m4a (FFmpeg's encoder, through PyAV)."""
    import av
    with av.open(path, "w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout, stream.bit_rate = "mono", bit_rate
        for start in range(0, len(samples), 1024):
            chunk = np.ascontiguousarray(samples[None, start:start + 1024], dtype=np.float32)
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def convert_list(list_path: str, train_root: str, out_root: str, extension: str) -> str:
    """The list's wav files re-encoded as ``extension`` (flac by soundfile, m4a by PyAV) under ``out_root``, and
    a train list of them beside; returns that list."""
    lines = []
    with open(list_path) as handle:
        for line in handle:
            speaker, relative = line.split()
            samples = read_audio(os.path.join(train_root, relative), FLOAT)
            target = os.path.splitext(relative)[0] + "." + extension
            os.makedirs(os.path.dirname(os.path.join(out_root, target)), exist_ok=True)
            if extension == "flac":
                sf.write(os.path.join(out_root, target), samples, 16000, format="FLAC", subtype="PCM_16")
            else:
                encode_m4a(os.path.join(out_root, target), samples)
            lines.append(f"{speaker} {target}\n")
    converted = os.path.join(out_root, "train_list.txt")
    with open(converted, "w") as handle:
        handle.writelines(lines)
    return converted


def replicate_list(list_path: str, train_root: str, out_root: str, copies: int) -> tuple[str, str]:
    """``copies`` copies of the list's files (new files, so each has its own pages in the cache) as the
    utterances of ``copies`` times as many speakers; returns the new list and its root."""
    lines = []
    with open(list_path) as handle:
        entries = [line.split() for line in handle if line.strip()]
    for copy in range(copies):
        for speaker, relative in entries:
            target = os.path.join(f"copy{copy}", relative)
            os.makedirs(os.path.dirname(os.path.join(out_root, target)), exist_ok=True)
            shutil.copyfile(os.path.join(train_root, relative), os.path.join(out_root, target))
            lines.append(f"copy{copy}-{speaker} {target}\n")
    replicated = os.path.join(out_root, "train_list.txt")
    with open(replicated, "w") as handle:
        handle.writelines(lines)
    return replicated, out_root


def make_format_sources(root: str, speakers: int, utterances: int, durations: tuple[float, float],
                        shard_size: int, copies: int = 1) -> dict:
    """VoxCeleb2-like synthetic utterances as each :data:`SOURCES` entry: ``name -> (kind, spec, files)``, kind
    ``list`` (spec: list path, root) or ``shards`` (spec: manifest path); ``files`` are what a cold epoch drops.
    The rendered corpus is encoded once per format and then copied ``copies`` times (as other speakers): an
    epoch long enough that the shard loader's workers, started anew each epoch, are not timed mostly starting."""
    corpus = make_corpus(os.path.join(root, "wav"), speakers=speakers, utterances=utterances, test_speakers=2,
                         test_utterances=2, trials=2, min_duration=durations[0], max_duration=durations[1], seed=5,
                         workers=min(2, os.cpu_count() or 1))
    lists = {"wav": (corpus["train_list"], corpus["train_path"])}
    for extension in ("flac", "m4a"):
        out = os.path.join(root, extension)
        lists[extension] = (convert_list(*lists["wav"], out, extension), out)
    lists = {name: replicate_list(*spec, os.path.join(root, f"{name}_copies"), copies)
             for name, spec in lists.items()}
    sources = {f"{name} files": ("list", spec, read_train_list(*spec).files) for name, spec in lists.items()}
    for name, (listed, audio) in (("wav shards", ("wav", "original")), ("m4a shards", ("m4a", "original")),
                                  ("flac shards from m4a", ("m4a", "flac"))):
        folder = os.path.join(root, name.replace(" ", "_"))
        manifest = make_shards(*lists[listed], folder, shard_size, audio_format=audio)
        tars = [os.path.join(folder, entry["name"]) for entry in manifest["shards"]]
        sources[name] = ("shards", os.path.join(folder, "manifest.json"), tars)
    return {name: sources[name] for name in SOURCES}


def worker_pids() -> set[int]:
    """This process's child processes (the loader's workers; Linux ``/proc``)."""
    me, found = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            found.add(int(entry))
    return found


TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def usage(pid: int) -> np.ndarray | None:
    """``[cpu seconds (user + system), rchar, read_bytes]`` of a process so far, None once it has gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rpartition(")")[2].split()
        with open(f"/proc/{pid}/io") as handle:
            io = dict(line.split(":") for line in handle)
    except (OSError, ValueError):
        return None
    cpu = (int(fields[11]) + int(fields[12])) / TICKS        # utime, stime (fields 14, 15 of stat)
    return np.array([cpu, int(io["rchar"]), int(io["read_bytes"])], dtype=np.float64)


def timed_epoch(loader, others: set[int]) -> tuple[int, float, np.ndarray]:
    """One epoch of ``loader``: crops, wall seconds, and its workers' ``usage`` over the epoch (persistent workers
    from their state at its start; workers started by the epoch from zero), read after each batch while they
    live; ``others`` are child processes that are not the loader's."""
    before = {pid: usage(pid) for pid in worker_pids() - others}
    started = time.perf_counter()
    crops, last, pids = 0, {}, None
    for batch in loader:
        crops += batch[0].shape[0]
        pids = worker_pids() - others if pids is None else pids     # all started by the first batch
        for pid in pids:
            now = usage(pid)
            if now is not None:
                last[pid] = now
    wall = time.perf_counter() - started
    spent = np.zeros(3)
    for pid, now in last.items():
        start = before.get(pid)
        spent += now - (start if start is not None else 0.0)
    return crops, wall, spent


def format_loader(source: tuple, frames: int, batch_size: int, workers: int, augment=None):
    """The training loader (``build_loader``) of a :func:`make_format_sources` entry, and its sampler/stream."""
    kind, spec, _ = source
    musan, rirs = augment or ("", "")
    common = dict(max_frames=frames, batch_size=batch_size, max_seg_per_spk=1000, loader_workers=workers,
                  musan_path=musan, rir_path=rirs, augment=augment is not None)
    if kind == "list":
        data = DataSpec(train_list=spec[0], train_path=spec[1], **common)
        train = read_train_list(*spec)
    else:
        data = DataSpec(train_shards=spec, **common)
        train = resolve_shards(spec)
    return build_loader(data, ORIGINAL, train, 2, torch.device("cpu"))


def measure_source(source: tuple, frames: int, batch_size: int, workers: int, augment=None, cold=False,
                   min_seconds=2.0, max_epochs=2000) -> dict:
    """Per worker crops/s, CPU-ms per crop and bytes read per crop (``rchar``, and ``read_bytes`` from storage)
    over whole epochs after a warm-up epoch (which starts the workers and, warm, fills the page cache)."""
    others = worker_pids()
    loader, sampler = format_loader(source, frames, batch_size, workers, augment)
    sampler.set_epoch(1)
    timed_epoch(loader, others)
    crops, wall, spent, epoch = 0, 0.0, np.zeros(3), 1
    while (wall < min_seconds or epoch < 2) and epoch <= max_epochs:
        epoch += 1
        sampler.set_epoch(epoch)
        if cold:
            drop_page_cache(source[2])
        got = timed_epoch(loader, others)
        crops, wall, spent = crops + got[0], wall + got[1], spent + got[2]
    del loader
    return {"crops/s": crops / wall / workers, "cpu_ms": 1000 * spent[0] / crops, "rchar_kib": spent[1] / crops / 1024,
            "disk_kib": spent[2] / crops / 1024, "crops": crops}


def profile_source(source: tuple, frames: int, batch_size: int, augment=None, top=18) -> None:
    """cProfile of one epoch's crop path in the main process (0 workers): the top functions by own time."""
    loader, sampler = format_loader(source, frames, batch_size, 0, augment)
    sampler.set_epoch(1)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in loader:
        pass
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def gpu_cores(cpu_ms: float, crops_per_s: float) -> float:
    """Loader cores that make ``crops_per_s`` crops/s at ``cpu_ms`` CPU-ms each: crops/s / (1000 / cpu_ms)."""
    return crops_per_s * cpu_ms / 1000.0


def run_formats(args, root: str, augment) -> dict:
    """Section (d): every source x cache x augmentation arm; returns ``(source, cold, augmented) -> result``."""
    started = time.perf_counter()
    sources = make_format_sources(os.path.join(root, "formats"), args.format_speakers, args.format_utterances,
                                  tuple(args.durations), args.shard_size, args.copies)
    wav_bytes = sum(os.path.getsize(path) for path in sources["wav files"][2])
    sizes = ", ".join(f"{name} {sum(os.path.getsize(p) for p in files) / wav_bytes:.2f}"
                      for name, (_, _, files) in sources.items() if name != "wav files")
    print(f"\n(d) formats: {len(sources['wav files'][2])} utterances of {args.copies} x {args.format_speakers} "
          f"speakers (copies of {args.format_speakers} x {args.format_utterances} rendered ones), "
          f"{args.durations[0]:g}-{args.durations[1]:g} s, written in {time.perf_counter() - started:.1f} s; sizes "
          f"against wav: {sizes}\n    {args.format_workers} loader worker(s), batches of {args.format_batch} x 2 "
          f"crops of {args.format_frames} frames, shards of {args.shard_size} utterances; per worker: crops/s "
          f"(wall), CPU-ms per crop (the workers' user + system time), KiB read per crop (rchar) and from storage "
          f"(read_bytes)")
    print(f"{'source':<24}{'cache':<6}{'augment':<9}{'crops/s':>9}{'CPU-ms':>9}{'read KiB':>10}{'disk KiB':>10}")
    results = {}
    for name in SOURCES:
        for augmented in (False, True):
            for cold in (False, True):
                got = measure_source(sources[name], args.format_frames, args.format_batch, args.format_workers,
                                     augment if augmented else None, cold, args.format_seconds)
                results[name, cold, augmented] = got
                print(f"{name:<24}{'cold' if cold else 'warm':<6}{'yes' if augmented else 'no':<9}"
                      f"{got['crops/s']:>9.0f}{got['cpu_ms']:>9.2f}{got['rchar_kib']:>10.1f}{got['disk_kib']:>10.1f}",
                      flush=True)
    if args.profile:
        for name in args.profile:
            print(f"\nprofile: {name}, one epoch in the main process (0 workers), by own time")
            profile_source(sources[name], args.format_frames, args.format_batch)
    return results


def report_cores(args, results: dict) -> None:
    """Section (e): loader cores per GPU per source, and the targets."""
    needed = args.gpu_groups * 2 * args.gpu_steps_per_s
    assumed = " (assumed: A100-class, fp16; measure with bench_train_gpu.py)" \
        if args.gpu_steps_per_s == ASSUMED_GPU_STEPS_PER_S else ""
    print(f"\n(e) loader cores for one GPU: mp_balance {args.gpu_groups} x 2 crops of {args.format_frames} frames a "
          f"step at {args.gpu_steps_per_s:g} steps/s{assumed} = {needed:.0f} crops/s; cores = crops/s needed / "
          f"(1000 / CPU-ms per crop)")
    print(f"{'source':<24}{'warm':>8}{'cold':>8}{'warm +aug':>11}{'cold +aug':>11}")
    for name in SOURCES:
        cores = [gpu_cores(results[name, cold, augmented]["cpu_ms"], needed)
                 for augmented in (False, True) for cold in (False, True)]
        print(f"{name:<24}{cores[0]:>8.1f}{cores[1]:>8.1f}{cores[2]:>11.1f}{cores[3]:>11.1f}")
    print("\ntargets")
    for kind in ("wav", "m4a"):
        files, shards = f"{kind} files", f"{kind} shards"
        for cold, factor in ((False, 1.0), (True, 3.0)):
            ratio = results[shards, cold, False]["crops/s"] / results[files, cold, False]["crops/s"]
            print(f"  {shards} / {files}, {'cold' if cold else 'warm'}: {ratio:.2f}x (target >= {factor:g}x): "
                  f"{'met' if ratio >= factor else 'MISSED'}")
    worst = {name: max(gpu_cores(results[name, cold, False]["cpu_ms"], needed) for cold in (False, True))
             for name in FROM_M4A}
    best = min(worst, key=worst.get)
    verdict = "met" if worst[best] <= args.max_cores else "MISSED"
    print(f"  VoxCeleb2's m4a feeding one GPU from <= {args.max_cores:g} cores (without --augment, the worse of "
          f"warm and cold): best {best}, {worst[best]:.1f} cores: {verdict}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="abcde", help="which of (a)-(e) to run; (e) needs (d)")
    parser.add_argument("--frames", type=int, default=200, help="training crop (--max_frames) of (a)-(c)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=16, help="groups (of 2 utterances) per batch")
    parser.add_argument("--speakers", type=int, default=48, help="synthetic corpus speakers")
    parser.add_argument("--utterances", type=int, default=8, help="synthetic utterances per speaker")
    parser.add_argument("--long_speakers", type=int, default=24)
    parser.add_argument("--long_per_speaker", type=int, default=4)
    parser.add_argument("--min_seconds", type=float, default=3.0, help="timed loader seconds per row, at least")
    parser.add_argument("--step_groups", type=int, default=32, help="training-step batch: groups x 2 utterances")
    parser.add_argument("--steps", type=int, default=2, help="training steps timed")
    parser.add_argument("--no_cold", action="store_true", help="skip the cold-cache rows of (b)")
    parser.add_argument("--no_step", action="store_true", help="skip (c)")
    formats = parser.add_argument_group("(d) formats and (e) cores per GPU")
    formats.add_argument("--format_speakers", type=int, default=24)
    formats.add_argument("--format_utterances", type=int, default=4, help="utterances per speaker")
    formats.add_argument("--copies", type=int, default=10, help="copies of the rendered corpus, as other speakers")
    formats.add_argument("--durations", type=float, nargs=2, default=(4.0, 12.0), metavar=("MIN", "MAX"),
                         help="utterance seconds (VoxCeleb2: 4 s and longer, about 8 s on average)")
    formats.add_argument("--format_frames", type=int, default=350, help="crop: the README's mp_balance 3.5 s")
    formats.add_argument("--format_batch", type=int, default=8, help="groups of 2 per batch")
    formats.add_argument("--format_workers", type=int, default=1, help="loader workers (rates are per worker)")
    formats.add_argument("--shard_size", type=int, default=64, help="utterances per shard")
    formats.add_argument("--format_seconds", type=float, default=2.0, help="timed seconds per arm, at least")
    formats.add_argument("--profile", nargs="*", default=[], choices=SOURCES, metavar="SOURCE",
                         help=f"cProfile one epoch of these sources' crop path ({', '.join(SOURCES)})")
    formats.add_argument("--gpu_steps_per_s", type=float, default=ASSUMED_GPU_STEPS_PER_S,
                         help="training steps/s of one GPU (bench_train_gpu.py's fp16 rate / 400); default: an "
                              "assumption for an A100-class GPU")
    formats.add_argument("--gpu_groups", type=int, default=200, help="groups of 2 per GPU step")
    formats.add_argument("--max_cores", type=float, default=12.0, help="target: loader cores per GPU, at most")
    args = parser.parse_args(argv)
    sections = set(args.sections)

    with tempfile.TemporaryDirectory(prefix="bench_loader_", dir=os.environ.get("BENCH_DIR")) as root:
        augment = make_augmentation_folders(os.path.join(root, "aug"))
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        if sections & set("abc"):
            files_against_whole(args, root, augment, sections)
        if "d" in sections:
            results = run_formats(args, root, augment)
            if "e" in sections:
                report_cores(args, results)


def files_against_whole(args, root: str, augment, sections: set) -> None:
    """Sections (a)-(c): partial reads against whole-file reads, and the loader against a CPU training step."""
    started = time.perf_counter()
    synth = make_corpus(os.path.join(root, "synth"), speakers=args.speakers, utterances=args.utterances,
                        test_speakers=2, test_utterances=2, trials=2, seed=3, workers=min(2, os.cpu_count() or 1))
    long_list = make_long_files(os.path.join(root, "long"), args.long_speakers, args.long_per_speaker)
    corpora = {"synthetic 2.1-4 s": (synth["train_list"], synth["train_path"]),
               "long 20-60 s": (long_list, os.path.join(root, "long", "wav"))}
    print(f"data written in {time.perf_counter() - started:.1f} s; crop {args.frames} frames "
          f"({max_audio_samples(args.frames)} samples)")
    if "a" in sections:
        print("\n(a) bytes read per training crop, as multiples of the crop's own bytes (target <= 1.2x for ours)")
        print(f"{'corpus':<20}{'files':>6}{'crop KiB':>10}{'ours KiB':>10}{'ours x':>8}{'max x':>8}"
              f"{'rchar x':>9}{'whole KiB':>11}{'whole x':>9}{'rchar x':>9}")
        for name, (list_path, train_root) in corpora.items():
            files = read_train_list(list_path, train_root).files
            got = bytes_per_crop(files, args.frames)
            ours, whole = got["partial"], got["whole"]
            print(f"{name:<20}{len(files):>6}{got['crop_kib']:>10.1f}{ours['kib']:>10.1f}{ours['mean']:>8.3f}"
                  f"{ours['max']:>8.3f}{ours['rchar'] or float('nan'):>9.3f}{whole['kib']:>11.1f}"
                  f"{whole['mean']:>9.2f}{whole['rchar'] or float('nan'):>9.2f}")
    if not sections & set("bc"):
        return
    print(f"\n(b) training loader, files/s ({args.workers} workers, batches of {args.batch_size} x 2 utterances)")
    print(f"{'corpus':<20}{'cache':<7}{'ours':>9}{'whole-file':>12}{'ours/whole':>12}")
    rates = {}
    for name, (list_path, train_root) in corpora.items():
        for cold in (False, True):
            if cold and args.no_cold:
                continue
            setting = loader_args(list_path, train_root, args.frames, args.batch_size, args.workers)
            ours = files_per_second(setting, min_seconds=args.min_seconds, cold=cold)
            whole = files_per_second(setting, whole_file=True, min_seconds=args.min_seconds, cold=cold)
            rates[name, cold] = ours
            print(f"{name:<20}{'cold' if cold else 'warm':<7}{ours:>9.0f}{whole:>12.0f}{ours / whole:>11.2f}x")
    list_path, train_root = corpora["synthetic 2.1-4 s"]
    setting = loader_args(list_path, train_root, args.frames, args.batch_size, args.workers, augment=augment)
    augmented = files_per_second(setting, min_seconds=args.min_seconds)
    whole_augmented = files_per_second(setting, whole_file=True, min_seconds=args.min_seconds)
    print(f"{'synthetic +augment':<20}{'warm':<7}{augmented:>9.0f}{whole_augmented:>12.0f}"
          f"{augmented / whole_augmented:>11.2f}x")
    if args.no_step or "c" not in sections:
        return
    from benchmarks.bench_train import measure
    step = measure("angleproto", groups=args.step_groups, per_group=2, frames=args.frames, steps=args.steps,
                   repeats=1, device="cpu", reference=False)["ours"]
    print(f"\n(c) loader ({args.workers} workers) vs a CPU training step (ResNetSE34L + angleproto, "
          f"{args.step_groups} x 2 x {args.frames} frames, {torch.get_num_threads()} threads): "
          f"{step:.1f} utterances/s consumed (target >= 3x)")
    print(f"{'loader':<32}{'files/s':>9}{'loader/step':>13}")
    rows = [(f"{name}, {'cold' if cold else 'warm'}", rate) for (name, cold), rate in rates.items()]
    rows.append(("synthetic 2.1-4 s +augment, warm", augmented))
    for label, rate in rows:
        print(f"{label:<32}{rate:>9.0f}{rate / step:>12.1f}x")


if __name__ == "__main__":
    main()
