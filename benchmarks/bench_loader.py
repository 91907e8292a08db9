"""Training-loader throughput (issue 6), in one run on data it makes in a temporary folder:

(a) bytes read per training crop by our partial reads (seek + read of the crop) next to a whole-file reader (the
    original's loadWAV decodes the file, then crops), counted by opening every file through a counting file
    object, and cross-checked with the kernel's ``rchar`` counter;
(b) files/s of the training loader (``spknet.training.run.build_loader``: TrainDataset + GroupBatchSampler +
    collate_groups, its DataLoader settings, 2 workers) next to the same DataLoader over a whole-file-reading
    dataset, on the synthetic corpus and on long (20-60 s) files, with a warm and a cold page cache, and ours with
    ``--augment`` (MUSAN-like noise and RIR folders it writes);
(c) those loader rates against what a CPU training step consumes (``bench_train.measure``: ResNetSE34L +
    angleproto) - the loader must keep ahead of the step (target >= 3x).

    python -m benchmarks.bench_loader
    python -m benchmarks.bench_loader --no_cold --no_step
"""

import argparse
import os
import tempfile
import time
from contextlib import contextmanager

import numpy as np
import soundfile as sf
import torch

from spknet.data import ORIGINAL, TrainDataset, load_wav, max_audio_samples, read_train_list
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
        for waves, _, _ in loader:
            utterances += waves.shape[0]
        seconds += time.perf_counter() - started
    del loader
    return utterances / seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200, help="training crop (--max_frames)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=16, help="groups (of 2 utterances) per batch")
    parser.add_argument("--speakers", type=int, default=48, help="synthetic corpus speakers")
    parser.add_argument("--utterances", type=int, default=8, help="synthetic utterances per speaker")
    parser.add_argument("--long_speakers", type=int, default=24)
    parser.add_argument("--long_per_speaker", type=int, default=4)
    parser.add_argument("--min_seconds", type=float, default=3.0, help="timed loader seconds per row, at least")
    parser.add_argument("--step_groups", type=int, default=32, help="training-step batch: groups x 2 utterances")
    parser.add_argument("--steps", type=int, default=2, help="training steps timed")
    parser.add_argument("--no_cold", action="store_true", help="skip the cold-cache rows")
    parser.add_argument("--no_step", action="store_true", help="skip (c)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_loader_", dir=os.environ.get("BENCH_DIR")) as root:
        started = time.perf_counter()
        synth = make_corpus(os.path.join(root, "synth"), speakers=args.speakers, utterances=args.utterances,
                            test_speakers=2, test_utterances=2, trials=2, seed=3,
                            workers=min(2, os.cpu_count() or 1))
        long_list = make_long_files(os.path.join(root, "long"), args.long_speakers, args.long_per_speaker)
        augment = make_augmentation_folders(os.path.join(root, "aug"))
        corpora = {"synthetic 2.1-4 s": (synth["train_list"], synth["train_path"]),
                   "long 20-60 s": (long_list, os.path.join(root, "long", "wav"))}
        print(f"data written in {time.perf_counter() - started:.1f} s; {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}; crop {args.frames} frames ({max_audio_samples(args.frames)} samples)\n")

        print("(a) bytes read per training crop, as multiples of the crop's own bytes (target <= 1.2x for ours)")
        print(f"{'corpus':<20}{'files':>6}{'crop KiB':>10}{'ours KiB':>10}{'ours x':>8}{'max x':>8}"
              f"{'rchar x':>9}{'whole KiB':>11}{'whole x':>9}{'rchar x':>9}")
        for name, (list_path, train_root) in corpora.items():
            files = read_train_list(list_path, train_root).files
            got = bytes_per_crop(files, args.frames)
            ours, whole = got["partial"], got["whole"]
            print(f"{name:<20}{len(files):>6}{got['crop_kib']:>10.1f}{ours['kib']:>10.1f}{ours['mean']:>8.3f}"
                  f"{ours['max']:>8.3f}{ours['rchar'] or float('nan'):>9.3f}{whole['kib']:>11.1f}"
                  f"{whole['mean']:>9.2f}{whole['rchar'] or float('nan'):>9.2f}")

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

        if args.no_step:
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
