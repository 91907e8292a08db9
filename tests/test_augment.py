"""--augment: MUSAN noise at the drawn SNR, babble, reverberation, determinism, partial reads, folder errors,
the loader wiring and one training run through the command line."""

import os
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from benchmarks import bench_loader as bench
from spknet.data import augment, load_wav, max_audio_samples, read_train_list
from spknet.data.augment import AUGMENT_TYPES, Augmenter, NoiseDraw, power_db
from spknet.errors import SpeakerNetError
from tests.helpers import make_folders, run_cli, write_audio

FRAMES = 50
LENGTH = max_audio_samples(FRAMES)          # 8240 samples


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return make_folders(tmp_path_factory.mktemp("augment"))


@pytest.fixture(scope="module")
def augmenter(folders):
    return Augmenter(folders[0], folders[1], FRAMES)


def clean_wave(seed=1):
    return (np.random.default_rng(seed).standard_normal(LENGTH) * 4000).astype(np.float32)


@pytest.mark.parametrize("category", ["noise", "music"])
def test_noise_is_mixed_at_the_drawn_snr(augmenter, category):
    low, high = augment.NOISE_SNR[category]
    for seed in range(6):
        rng = np.random.default_rng(seed)
        wave = clean_wave(seed)
        draws = augmenter.draw_noises(category, rng)
        assert len(draws) == 1 and low <= draws[0].snr <= high
        noisy = augmenter.add_noises(wave, draws, rng)
        assert noisy.dtype == np.float32 and noisy.shape == wave.shape
        achieved = power_db(wave) - power_db(noisy.astype(np.float64) - wave)
        assert abs(achieved - draws[0].snr) < 0.5


def test_a_short_noise_file_is_tiled(augmenter):
    short = augmenter.noise_files["noise"][0]           # 0.3 s, shorter than the 0.515-s crop
    assert sf.info(short).frames < LENGTH
    wave = clean_wave()
    noisy = augmenter.add_noises(wave, [NoiseDraw(short, 5.0)], np.random.default_rng(0))
    noise = noisy.astype(np.float64) - wave
    assert abs(power_db(wave) - power_db(noise) - 5.0) < 0.5
    period = sf.info(short).frames
    assert np.allclose(noise[:LENGTH - period], noise[period:], atol=1e-2)


def test_babble_mixes_3_to_7_talkers(augmenter):
    counts = set()
    for seed in range(40):
        draws = augmenter.draw_noises("speech", np.random.default_rng(seed))
        assert 3 <= len(draws) <= 7
        assert len({draw.path for draw in draws}) == len(draws)          # distinct talkers
        assert all(13 <= draw.snr <= 20 for draw in draws)
        counts.add(len(draws))
    assert counts == {3, 4, 5, 6, 7}
    # the babble is the sum of the talkers, each scaled to its own SNR against the clean wave
    wave, draws = clean_wave(), augmenter.draw_noises("speech", np.random.default_rng(3))
    total = augmenter.add_noises(wave, draws, np.random.default_rng(9)).astype(np.float64) - wave
    rng = np.random.default_rng(9)
    parts = [augmenter.add_noises(wave, [draw], rng).astype(np.float64) - wave for draw in draws]
    assert np.allclose(total, np.sum(parts, axis=0), atol=0.05)


def test_reverberation_keeps_the_length_and_a_delta_rir_the_signal(folders):
    wave = clean_wave()
    reverb = Augmenter(folders[0], folders[1], FRAMES, types=("reverb",))
    out = reverb(wave, np.random.default_rng(0))
    assert out.shape == wave.shape and out.dtype == np.float32 and not np.allclose(out, wave)
    delta = Augmenter(folders[0], folders[2], FRAMES, types=("reverb",))
    out = delta(wave, np.random.default_rng(0))
    assert out.shape == wave.shape
    assert np.allclose(out, wave, atol=1e-2)         # 0.5 * delta, normalised to unit energy: the signal itself


def test_types_are_drawn_uniformly_and_runs_are_deterministic(augmenter):
    wave = clean_wave()
    first = [augmenter(wave, np.random.default_rng(seed)) for seed in range(10)]
    again = [augmenter(wave, np.random.default_rng(seed)) for seed in range(10)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert len({a.tobytes() for a in first}) > 5
    drawn = [AUGMENT_TYPES[np.random.default_rng(seed).integers(5)] for seed in range(1000)]
    counts = {kind: drawn.count(kind) for kind in AUGMENT_TYPES}
    assert all(150 < count < 250 for count in counts.values()), counts
    untouched = sum(np.array_equal(augmenter(wave, np.random.default_rng(seed)), wave) for seed in range(50))
    assert 3 <= untouched <= 20                     # "none" is one of the 5 choices


def test_noise_and_training_crops_read_only_their_bytes(tmp_path, augmenter):
    long_file = write_audio(tmp_path / "long.wav", np.random.default_rng(0).standard_normal(16000 * 30) * 1000)
    with bench.counting_reads() as counter:
        augment.read_noise_crop(long_file, LENGTH, np.random.default_rng(0))
        noise_bytes = counter.bytes
        load_wav(long_file, FRAMES, evalmode=False, rng=np.random.default_rng(0))
        crop_bytes = counter.bytes - noise_bytes
    assert noise_bytes <= 1.2 * LENGTH * 2 and crop_bytes <= 1.2 * LENGTH * 2
    assert os.path.getsize(long_file) > 50 * LENGTH * 2


def test_bench_loader_counts_bytes(tmp_path):
    files = [write_audio(tmp_path / f"{i}.wav", np.ones(16000 * (5 + i))) for i in range(3)]
    got = bench.bytes_per_crop(files, FRAMES)
    assert got["partial"]["max"] <= 1.2 and got["whole"]["mean"] > 5


@pytest.mark.parametrize("case", ["no_musan", "no_category", "empty_category", "no_rirs", "empty_rirs"])
def test_missing_or_empty_folders_are_clear_errors(tmp_path, folders, case):
    musan, rirs, _ = folders
    expected = {"no_musan": "musan", "no_category": "speech", "empty_category": "speech", "no_rirs": "rirs",
                "empty_rirs": "rirs"}[case]
    if case == "no_musan":
        musan = str(tmp_path / "musan")
    elif case in ("no_category", "empty_category"):
        musan = str(tmp_path / "musan")
        for category in ("noise", "music"):
            write_audio(tmp_path / "musan" / category / "a.wav", np.ones(1000))
        if case == "empty_category":
            (tmp_path / "musan" / "speech").mkdir()
    elif case == "no_rirs":
        rirs = str(tmp_path / "rirs")
    else:
        (tmp_path / "rirs").mkdir()
        (tmp_path / "rirs" / "readme.txt").write_text("no wavs")
        rirs = str(tmp_path / "rirs")
    with pytest.raises(SpeakerNetError) as raised:
        Augmenter(musan, rirs, FRAMES)
    message = str(raised.value)
    assert expected in message and ("folder not found" in message or "no .wav files" in message)
    assert "augmentation expects" in message


def test_a_noise_file_at_another_rate_with_two_channels_is_read_at_16_khz_mono(tmp_path):
    """The one reader: 8-kHz stereo noise is mixed down and resampled, and the crop is the matching window."""
    import torchaudio
    stereo = np.random.default_rng(3).uniform(-8000, 8000, (4000, 2))
    path = write_audio(tmp_path / "noise.wav", stereo, rate=8000)
    pcm = np.clip(stereo, -32767, 32767).astype(np.int16).astype(np.float32)
    expected = torchaudio.functional.resample(torch.from_numpy(pcm.mean(axis=1)), 8000, 16000).numpy()
    start = int(np.random.default_rng(5).integers(0, expected.shape[0] - 6000 + 1))
    crop = augment.read_noise_crop(path, 6000, np.random.default_rng(5))
    assert crop.shape == (6000,) and np.allclose(crop, expected[start:start + 6000], rtol=0, atol=1e-2)


def loader_batches(tiny_corpus, folders, workers):
    from spknet.data import ORIGINAL
    from spknet.specs import DataSpec
    from spknet.training.run import build_loader
    data = DataSpec(batch_size=8, loader_workers=workers, max_frames=FRAMES, augment=True, musan_path=folders[0],
                    rir_path=folders[1])
    train_list = read_train_list(tiny_corpus["train_list"], tiny_corpus["train_path"])
    loader, sampler = build_loader(data, ORIGINAL, train_list, 2, torch.device("cpu"))
    sampler.set_epoch(1)
    return [batch[0] for batch in loader][:4]


def test_augmented_batches_do_not_depend_on_the_workers(tiny_corpus, folders):
    alone = loader_batches(tiny_corpus, folders, 0)
    pooled = loader_batches(tiny_corpus, folders, 2)
    assert len(alone) == len(pooled) == 4 and alone[0].shape == (16, LENGTH)
    assert all(torch.equal(a, b) for a, b in zip(alone, pooled))


@pytest.mark.slow
def test_training_with_augment_through_the_command_line(tiny_corpus, folders, tmp_path, capsys):
    common = ["--model", "ResNetSE34L", "--trainfunc", "mp_balance", "--nOut", "32", "--max_frames", "50",
              "--batch_size", "8", "--max_epoch", "1", "--nDataLoaderThread", "0", "--augment",
              *[f"--{key}={value}" for key, value in tiny_corpus.items()]]
    # a bad folder fails before anything is written (in this process: the same code path, without a startup)
    import trainSpeakerNet
    numpy_state = np.random.get_state()
    with torch.random.fork_rng():
        status = trainSpeakerNet.main([*common, "--musan_path", str(tmp_path / "nowhere"), "--rir_path", folders[1],
                                       "--save_path", str(tmp_path / "bad")])
    np.random.set_state(numpy_state)
    error = capsys.readouterr().err
    assert status == 2 and "--augment --musan_path" in error and "nowhere: folder not found" in error
    assert not (tmp_path / "bad").exists()
    good = run_cli(*common, "--musan_path", folders[0], "--rir_path", folders[1], "--save_path", tmp_path / "run",
                   env={"OMP_NUM_THREADS": "1"})
    assert good.returncode == 0, good.stderr[-3000:]
    log = (tmp_path / "run" / "result" / "scores.txt").read_text()
    assert "augment True" in log
    assert re.search(r"^IT 1, LR \d+\.\d{6}, TEER/T1 \d+\.\d{2}, TLOSS \d+\.\d{6}, VEER \d+\.\d{4}$", log, re.M)
