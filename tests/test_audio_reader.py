"""The one audio reader: any rate and channel count as 16-kHz mono, partial reads, errors naming the file, and the
training sources that read through it."""

import os
import re
from contextlib import contextmanager

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

import trainSpeakerNet
from spknet.data import (
    FLOAT,
    ORIGINAL,
    GroupBatchSampler,
    TrainDataset,
    UtteranceSource,
    collate_groups,
    load_train_crop,
    load_wav,
    max_audio_samples,
    open_audio,
    read_audio,
    read_train_list,
)
from spknet.data import (
    TestDataset as EvalDataset,
)
from spknet.errors import SpeakerNetError

# name, rate, channels, subtype, format
FORMATS = [
    ("pcm8k.wav", 8000, 1, "PCM_16", None),
    ("float44k.wav", 44100, 1, "FLOAT", None),
    ("stereo16k.wav", 16000, 2, "PCM_16", None),
    ("stereo22k.flac", 22050, 2, "PCM_16", "FLAC"),
    ("vorbis48k.ogg", 48000, 1, "VORBIS", "OGG"),
    ("stereo16k.ogg", 16000, 2, "VORBIS", "OGG"),
]


def write(path, rate, channels, subtype="PCM_16", fmt=None, seconds=1.3, seed=0):
    samples = np.random.default_rng(seed).uniform(-0.5, 0.5, (int(rate * seconds), channels)).astype(np.float32)
    sf.write(path, samples, rate, subtype=subtype, format=fmt)
    return str(path)


def reference(path) -> np.ndarray:
    """What the reader must give: soundfile's samples, the channels' mean, torchaudio's resampling to 16 kHz."""
    raw, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = torch.from_numpy(raw).mean(dim=1)
    return (mono if rate == 16000 else torchaudio.functional.resample(mono, rate, 16000)).numpy()


@pytest.mark.parametrize("name,rate,channels,subtype,fmt", FORMATS)
def test_any_rate_and_channel_count_is_16_khz_mono(tmp_path, name, rate, channels, subtype, fmt):
    path = write(tmp_path / name, rate, channels, subtype, fmt)
    expected = reference(path)
    got = read_audio(path, FLOAT)
    assert got.dtype == np.float32 and got.shape == expected.shape == (int(1.3 * 16000),)
    assert np.allclose(got, expected, rtol=0, atol=1e-6)
    assert np.allclose(read_audio(path), expected * 32768.0, rtol=0, atol=1e-6 * 32768)     # the int16 scale
    # every window is the whole file's samples there: partial reads widened for the filter, then trimmed
    with open_audio(path) as audio:
        assert audio.frames == expected.shape[0]
        for start, frames in ((0, 1000), (5, 3000), (7777, 5000), (audio.frames - 4000, 4000), (audio.frames - 1, 1)):
            window = audio.read(start, frames, FLOAT)
            assert window.shape == (frames,) and np.allclose(window, expected[start:start + frames], rtol=0,
                                                             atol=1e-6), (start, frames)


def test_16_khz_mono_pcm16_is_read_exactly(tmp_path):
    samples = np.random.default_rng(1).integers(-32768, 32767, 20000).astype(np.int16)
    path = tmp_path / "x.wav"
    sf.write(path, samples, 16000, subtype="PCM_16")
    assert np.array_equal(read_audio(str(path)), samples.astype(np.float32))
    assert np.array_equal(read_audio(str(path), FLOAT), samples.astype(np.float32) / 32768.0)
    with open_audio(str(path)) as audio:
        assert np.array_equal(audio.read(1234, 5000), samples[1234:6234].astype(np.float32))


@contextmanager
def counted_reads():
    """The frame counts asked of ``soundfile.SoundFile.read`` within the block."""
    counts = []
    real = sf.SoundFile.read

    def read(self, frames=-1, *args, **kwargs):
        out = real(self, frames, *args, **kwargs)
        counts.append(out.shape[0])
        return out

    sf.SoundFile.read = read
    try:
        yield counts
    finally:
        sf.SoundFile.read = real


@pytest.mark.parametrize("rate", [16000, 44100, 8000])
def test_a_training_crop_reads_only_about_the_crop(tmp_path, rate):
    path = write(tmp_path / "long.wav", rate, 1, seconds=60.0)
    crop_samples = max_audio_samples(200)
    with counted_reads() as counts:
        crop = load_train_crop(path, 200, np.random.default_rng(0))
    assert crop.shape == (1, crop_samples)
    at_file_rate = crop_samples * rate / 16000
    if rate == 16000:
        assert counts == [crop_samples]
    else:   # the window that maps to the crop, widened by a few blocks of the rational resampler
        assert len(counts) == 1 and at_file_rate <= counts[0] <= at_file_rate + 4 * 441
    assert counts[0] < 0.04 * 60 * rate          # a 2-s crop of a 60-s file


def test_training_crops_of_another_rate_are_windows_of_the_resampled_file(tmp_path):
    path = write(tmp_path / "stereo44k.wav", 44100, 2, subtype="FLOAT", seconds=3.0)
    whole = read_audio(path)
    for seed in range(5):
        crop = load_train_crop(path, 50, np.random.default_rng(seed))[0]
        start = int(np.random.default_rng(seed).random() * (whole.shape[0] - crop.shape[0]))
        assert np.allclose(crop, whole[start:start + crop.shape[0]], rtol=0, atol=1e-6 * 32768)
    short = write(tmp_path / "short8k.wav", 8000, 2, seconds=0.2)          # shorter than a crop: padded
    crop = load_train_crop(short, 50, np.random.default_rng(0))
    assert crop.shape == (1, max_audio_samples(50))
    assert load_wav(short, 0)[0].shape == (3200,)


@pytest.mark.parametrize("case,message", [
    ("missing", "cannot read audio"), ("garbage", "cannot read audio"), ("nan", r"non-finite \(NaN/inf\) samples"),
    ("truncated", "truncated file"), ("empty", "0 samples: empty audio file"),
    ("short", "158 samples, shorter than one 10-ms hop")])
def test_errors_name_the_file_at_any_rate(tmp_path, case, message):
    path = tmp_path / f"{case}.wav"
    if case == "garbage":
        path.write_bytes(b"RIFF....WAVEfmt garbage")
    elif case == "nan":
        samples = np.zeros((20000, 2), dtype=np.float32)
        samples[1234, 1] = np.nan
        sf.write(path, samples, 8000, subtype="FLOAT")
    elif case == "truncated":
        write(path, 8000, 2, seconds=3.0)
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 3])          # the header still announces 3 s
    elif case in ("empty", "short"):
        sf.write(path, np.ones((0 if case == "empty" else 79, 2), dtype=np.int16), 8000, subtype="PCM_16")
    try:
        for evalmode in (True, False):
            load_wav(str(path), 100, evalmode=evalmode, rng=np.random.default_rng(0))
    except SpeakerNetError as error:
        assert str(path) in str(error) and re.search(message, str(error)), str(error)
    else:   # libsndfile may shorten a truncated file's announced length itself: then nothing is missing
        assert case == "truncated"
    if case == "empty":
        with pytest.raises(SpeakerNetError, match=rf"{path}: 0 samples: empty audio file$"):
            open_audio(str(path), min_frames=1)


# ---- sources ----------------------------------------------------------------------------------------------------

class MemorySource(UtteranceSource):
    """Utterances held in memory: a second source needs only its labels, names and a window read."""

    class Utterance:
        def __init__(self, samples):
            self.samples, self.frames = samples, samples.shape[0]

        def read(self, start=0, frames=-1, pipeline=ORIGINAL):
            frames = self.frames - start if frames < 0 else frames
            return pipeline.from_int16_scale(self.samples[start:start + frames])

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def __init__(self, waves, labels):
        self.waves, self.labels = waves, np.asarray(labels)
        self.speakers = [f"spk{label}" for label in sorted(set(labels))]

    def name(self, index):
        return f"memory:{index}"

    def open(self, index):
        return self.Utterance(self.waves[index])


def test_a_source_in_memory_gives_the_crops_of_the_same_files(tmp_path):
    rng = np.random.default_rng(2)
    waves = [rng.integers(-20000, 20000, length).astype(np.float32) for length in (30000, 4000, 25000, 12000)]
    labels = [0, 0, 1, 1]
    paths = []
    for index, wave in enumerate(waves):
        paths.append(str(tmp_path / f"{index}.wav"))
        sf.write(paths[-1], wave.astype(np.int16), 16000, subtype="PCM_16")
    lines = "".join(f"spk{label} {os.path.basename(path)}\n" for label, path in zip(labels, paths))
    (tmp_path / "train.txt").write_text(lines)
    files = read_train_list(str(tmp_path / "train.txt"), str(tmp_path))      # a training list is a source
    memory = MemorySource(waves, labels)
    assert files.name(1) == paths[1] and len(files) == len(memory) == 4 and files.speakers == memory.speakers
    sampler = GroupBatchSampler(memory.labels, (2,), 2, 100, seed=3)      # the sampler needs only the labels
    sampler.set_epoch(1)
    for dataset_kwargs in ({}, {"pipeline": FLOAT}):
        from_files = TrainDataset(files, 50, **dataset_kwargs)
        from_memory = TrainDataset(memory, 50, **dataset_kwargs)
        batches = [torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_groups)
                   for dataset in (from_files, from_memory)]
        for (a, labels_a, _), (b, labels_b, _) in zip(*batches):
            assert torch.equal(a, b) and torch.equal(labels_a, labels_b)


def test_evaluation_reads_any_file_through_the_reader(tmp_path):
    path = write(tmp_path / "stereo8k.wav", 8000, 2, seconds=2.0)
    dataset = EvalDataset([os.path.basename(path)], str(tmp_path), 0)
    crops, _ = dataset[0]
    assert dataset.num_samples(0) == crops.shape[1] == 32000
    assert np.allclose(crops[0].numpy(), reference(path) * 32768.0, rtol=0, atol=1e-6 * 32768)


# ---- a training run -----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_training_on_a_corpus_with_an_8_khz_file_and_a_stereo_file(tiny_corpus, tmp_path):
    """Before the one reader a file not at 16 kHz or not mono killed training in a loader worker."""
    lines = open(tiny_corpus["train_list"]).read().splitlines()
    root = tiny_corpus["train_path"]
    changed = []
    for index, (rate, channels) in ((0, (8000, 1)), (1, (16000, 2)), (7, (44100, 2))):
        speaker, relative = lines[index].split()
        audio, _ = sf.read(os.path.join(root, relative), dtype="float32")
        wave = torchaudio.functional.resample(torch.from_numpy(audio), 16000, rate).numpy()
        target = tmp_path / f"converted{index}.wav"
        sf.write(target, np.stack([wave] * channels, axis=1), rate, subtype="PCM_16")
        lines[index] = f"{speaker} {target}"             # an absolute path: os.path.join keeps it
        changed.append(str(target))
    train_list = tmp_path / "train_list.txt"
    train_list.write_text("\n".join(lines) + "\n")
    trials = open(tiny_corpus["test_list"]).read().splitlines()[:20]
    label, _, test = trials[0].split()
    trials.append(f"{label} {changed[0]} {changed[1]}")
    test_list = tmp_path / "test_list.txt"
    test_list.write_text("\n".join(trials) + "\n")
    save_path = tmp_path / "run"
    code = trainSpeakerNet.main([
        "--model", "ResNetSE34L", "--trainfunc", "mp_balance", "--max_epoch", "1", "--max_frames", "50",
        "--batch_size", "8", "--nDataLoaderThread", "1", "--nOut", "16", "--eval_frames", "0",
        "--train_list", str(train_list), "--test_list", str(test_list), "--train_path", root,
        "--test_path", tiny_corpus["test_path"], "--save_path", str(save_path)])
    assert code == 0
    assert (save_path / "model" / "model000000001.model").exists()
