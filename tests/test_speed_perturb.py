"""--speed_perturb: (speaker, speed) classes, the sampler's dealing of utterances to them, the speed change itself
(length and pitch), crops cut after it, a loader batch, determinism, and the --nSpeakers default and check."""

import numpy as np
import pytest
import torch
import yaml

import trainSpeakerNet
from spknet.data import (
    SPEED_MARGIN,
    AudioPipeline,
    GroupBatchSampler,
    SpeedPerturbedSource,
    TrainDataset,
    TrainList,
    UtteranceSource,
    change_speed,
    collate_groups,
    load_train_crop,
    load_wav,
    max_audio_samples,
    read_train_list,
    speed_perturbed,
)
from spknet.errors import SpeakerNetError
from spknet.training.run import SPEED_FACTORS, training_classes, training_data
from tests.helpers import make_folders, run_cli, write_wav
from trainSpeakerNet import spec_from_argv

SPEEDS = SPEED_FACTORS
FRAMES = 50
LENGTH = max_audio_samples(FRAMES)


def recorded_list(counts):
    """A list of ``counts[s]`` utterances for speaker ``s`` (files named after their position)."""
    labels = np.repeat(np.arange(len(counts)), counts)
    return TrainList([f"f{i}.wav" for i in range(len(labels))], labels, [f"id{s:02d}" for s in range(len(counts))])


def tone(frequency, seconds=1.0, amplitude=10000.0):
    return amplitude * np.sin(2 * np.pi * frequency * np.arange(int(16000 * seconds)) / 16000)


def peak_frequency(wave):
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return np.argmax(spectrum) * 16000 / len(wave)


def test_each_speaker_and_speed_is_a_class_and_one_point_zero_keeps_its_label():
    base = recorded_list([2, 3, 1])
    perturbed = speed_perturbed(base, SPEEDS)
    assert perturbed.copies == 3 and len(perturbed.speakers) == 9 and len(perturbed.files) == 18
    assert perturbed.speakers[:3] == base.speakers                         # 1.0 first: the recorded speakers
    assert perturbed.speakers[3:6] == ["id00_speed0.9", "id01_speed0.9", "id02_speed0.9"]
    assert perturbed.speakers[6] == "id00_speed1.1"
    assert perturbed.files == base.files * 3
    for entry, (label, speed) in enumerate(zip(perturbed.labels, perturbed.speeds)):
        block = entry // 6
        assert speed == SPEEDS[block]
        assert label == base.labels[entry % 6] + 3 * block                  # speed block k shifts labels by k * 3
        assert perturbed.speakers[label].startswith(base.speakers[base.labels[entry % 6]])


def test_a_perturbed_list_is_its_source_in_speed_blocks(tmp_path):
    base = recorded_list([2, 1])
    perturbed = speed_perturbed(base, SPEEDS)
    assert isinstance(base, UtteranceSource) and isinstance(perturbed, SpeedPerturbedSource) and len(perturbed) == 9
    assert [perturbed.name(i) for i in range(9)] == base.files * 3
    assert [perturbed.speed(i) for i in range(9)] == perturbed.speeds.tolist() == [1.0] * 3 + [0.9] * 3 + [1.1] * 3
    write_wav(tmp_path / "x.wav", tone(300.0, 0.2))
    listed = TrainList([str(tmp_path / "x.wav")], np.array([0]), ["amy"])
    with speed_perturbed(listed, SPEEDS).open(2) as audio:       # block 2 reads the recorded file
        assert np.array_equal(audio.read(), load_wav(str(tmp_path / "x.wav"), 0)[0].astype(np.float32))


def test_the_run_perturbs_a_training_list_as_it_perturbs_any_source(tiny_corpus):
    spec = spec_from_argv(["--train_list", tiny_corpus["train_list"], "--train_path", tiny_corpus["train_path"],
                           "--test_list", tiny_corpus["test_list"], "--test_path", tiny_corpus["test_path"],
                           "--speed_perturb"])
    source, name, recorded = training_data(spec.data)
    listed = read_train_list(tiny_corpus["train_list"], tiny_corpus["train_path"])
    assert name == tiny_corpus["train_list"] and recorded == len(listed.speakers) == 40
    assert isinstance(source, SpeedPerturbedSource) and source.copies == 3 and len(source.speakers) == 120
    assert source.speakers[40] == f"{listed.speakers[0]}_speed0.9" and source.files == listed.files * 3
    assert np.array_equal(source.labels, np.concatenate([listed.labels + 40 * k for k in range(3)]))


def test_speed_factors_must_be_distinct_and_positive():
    with pytest.raises(Exception, match="distinct and positive"):
        speed_perturbed(recorded_list([2]), (1.0, 1.0))
    with pytest.raises(Exception, match="distinct and positive"):
        speed_perturbed(recorded_list([2]), (1.0, -0.9))


@pytest.mark.parametrize("group_sizes", [(2,), (2, 3), (1,)])
def test_groups_share_one_speaker_and_speed_and_the_epoch_keeps_its_length(group_sizes):
    counts = np.random.default_rng(1).integers(6, 20, size=30)
    base = recorded_list(counts)
    perturbed = speed_perturbed(base, SPEEDS)
    sampler = GroupBatchSampler(perturbed.labels, group_sizes, 8, 12, seed=5, copies=3)
    used, classes = [], set()
    for batch in sampler:
        assert len({group.label for group in batch}) == len(batch) == 8   # distinct classes in a batch
        for group in batch:
            assert len(group.files) in group_sizes
            assert {perturbed.labels[f] for f in group.files} == {group.label}      # one class per group ...
            assert len({perturbed.speeds[f] for f in group.files}) == 1             # ... so one speed
            used += [f % len(base.files) for f in group.files]
            classes.add(group.label)
    assert len(used) == len(set(used))                        # each recorded utterance heard once, at one speed
    assert np.bincount(base.labels[used], minlength=30).max() <= 12    # --max_seg_per_spk: over all speeds
    # every speed is trained, and nearly every class (the end of an epoch, a partial batch, is left out)
    assert len(classes) >= 85 and [sum(label // 30 == k for label in classes) for k in range(3)] >= [28] * 3
    plain = GroupBatchSampler(base.labels, group_sizes, 8, 12, seed=5)
    plain_utterances = sum(len(group.files) for batch in plain for group in batch)
    if group_sizes == (1,):
        assert len(used) == plain_utterances                  # nothing lost to the dealing
    else:                                                     # at most a rounding per class more than at 1.0
        assert plain_utterances - 2 * 30 * max(group_sizes) <= len(used) <= plain_utterances + 8


def test_dealing_gives_the_classes_of_a_speaker_equal_shares():
    perturbed = speed_perturbed(recorded_list([12] * 10), SPEEDS)
    sampler = GroupBatchSampler(perturbed.labels, (2,), 5, 100, seed=0, copies=3)
    per_class = np.bincount([perturbed.labels[f] for batch in sampler for group in batch for f in group.files],
                            minlength=30)
    assert per_class.tolist() == [4] * 30


def test_the_sampler_is_deterministic_per_seed_and_epoch():
    perturbed = speed_perturbed(recorded_list([9] * 12), SPEEDS)
    a, b = (GroupBatchSampler(perturbed.labels, (2,), 4, 100, seed=3, copies=3) for _ in range(2))
    first = list(a)
    assert first == list(b)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b) != first
    assert list(GroupBatchSampler(perturbed.labels, (2,), 4, 100, seed=4, copies=3)) != first


def test_the_fillable_check_counts_each_class_with_its_share():
    perturbed = speed_perturbed(recorded_list([4] * 10), SPEEDS)     # shares 2, 1, 1: one class of 2 per speaker
    GroupBatchSampler(perturbed.labels, (2,), 10, 100, copies=3)
    with pytest.raises(Exception, match=r"batches of 11 groups can never be filled.*has 10 \(speaker x speed"):
        GroupBatchSampler(perturbed.labels, (2,), 11, 100, copies=3)
    GroupBatchSampler(perturbed.labels, (1,), 30, 100, copies=3)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_a_speed_change_scales_the_length_and_every_frequency(factor):
    wave = tone(500.0) + tone(1300.0, amplitude=4000.0)
    changed = change_speed(wave.astype(np.float32), factor)
    assert changed.dtype == np.float32
    assert abs(len(changed) - 16000 / factor) <= 1                          # 1.1 x faster: 1/1.1 as long
    assert peak_frequency(changed) == pytest.approx(500.0 * factor, abs=1.5)   # and 1.1 x higher
    spectrum = np.abs(np.fft.rfft(changed * np.hanning(len(changed))))
    bin_hz = 16000 / len(changed)
    second = np.argmax(spectrum[int(1000 / bin_hz):]) + int(1000 / bin_hz)
    assert second * bin_hz == pytest.approx(1300.0 * factor, abs=1.5)
    interior = slice(200, len(changed) - 200)
    assert np.sqrt(np.mean(changed[interior] ** 2)) == pytest.approx(np.sqrt(np.mean(wave ** 2)), rel=0.02)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_a_crop_is_cut_after_the_speed_change_from_a_partial_read(tmp_path, factor):
    wave = np.random.default_rng(0).standard_normal(40000) * 3000
    path = write_wav(tmp_path / "long.wav", wave)
    crop = load_train_crop(path, FRAMES, np.random.default_rng(7), speed=factor)
    assert crop.shape == (1, LENGTH) and crop.dtype == np.float32
    # the same samples changed with real signal on both sides: a read from 99 samples earlier (99 input samples
    # are 110 output samples at 0.9 and 90 at 1.1, whole ones, so both reads share the filter's phase)
    needed = int(np.ceil(LENGTH * factor)) + 2 * SPEED_MARGIN
    start = int(np.random.default_rng(7).random() * (40000 - needed))
    assert start >= 99
    earlier = change_speed(sf_read(path)[start - 99:], factor)
    shift = round(99 / factor) + round(SPEED_MARGIN / factor)
    reference = earlier[shift:shift + LENGTH]
    assert np.abs(reference - crop[0]).max() < 0.01 * np.abs(reference).max()   # the margin hides the read's edges
    assert np.abs(reference - crop[0]).mean() < 1e-4 * np.abs(reference).mean()


def sf_read(path):
    return load_wav(path, 0)[0]


@pytest.mark.parametrize("pad", ["zero", "wrap"])
@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_a_short_file_is_changed_whole_then_padded_to_a_full_crop(tmp_path, factor, pad):
    path = write_wav(tmp_path / "short.wav", tone(300.0, seconds=0.4))      # 6400 samples, shorter than a crop
    pipeline = AudioPipeline(scale="float", pad=pad)
    crop = load_train_crop(path, FRAMES, np.random.default_rng(1), pipeline, speed=factor)
    assert crop.shape == (1, LENGTH)
    assert np.abs(crop).max() <= 1.0
    if pad == "zero":      # the changed file is round(6400 / factor) samples, the rest zeros
        assert abs(np.count_nonzero(np.abs(crop[0]) > 1e-6) - 6400 / factor) < 30


def test_one_point_zero_is_the_plain_crop(tmp_path):
    path = write_wav(tmp_path / "x.wav", np.random.default_rng(2).standard_normal(30000) * 3000)
    assert np.array_equal(load_train_crop(path, FRAMES, np.random.default_rng(3)),
                          load_wav(path, FRAMES, evalmode=False, rng=np.random.default_rng(3)))


@pytest.fixture(scope="module")
def perturbed_corpus(tmp_path_factory):
    """Six speakers of six files each, short (0.45 s) and long (2 s), one tone per speaker."""
    root = tmp_path_factory.mktemp("speed_corpus")
    lines = []
    for speaker in range(6):
        for index in range(6):
            seconds = 0.45 if index % 2 else 2.0
            write_wav(root / f"s{speaker}_{index}.wav", tone(200.0 + 100 * speaker, seconds))
            lines.append(f"spk{speaker} s{speaker}_{index}.wav")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return speed_perturbed(read_train_list(str(root / "train.txt"), str(root)), SPEEDS), root


@pytest.mark.parametrize("augment", [False, True], ids=["plain", "augment"])
def test_a_loader_batch_plays_each_group_at_its_class_speed(perturbed_corpus, tmp_path, augment):
    train_list, _ = perturbed_corpus
    augmenter = None
    if augment:
        from spknet.data.augment import Augmenter
        musan, rirs, _ = make_folders(tmp_path)
        augmenter = Augmenter(musan, rirs, FRAMES)
    sampler = GroupBatchSampler(train_list.labels, (2,), 6, 100, seed=1, copies=3)
    dataset = TrainDataset(train_list, FRAMES, augmenter=augmenter)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_groups, num_workers=0)
    batches = list(loader)
    assert len(batches) == 3                      # 2 utterances per class: 18 groups of 2, 6 per batch
    for (waves, labels, sizes), groups in zip(batches, sampler):
        assert waves.shape == (12, LENGTH) and sizes.tolist() == [2] * 6
        assert labels.tolist() == [group.label for group in groups for _ in group.files]
        assert int(labels.max()) < 18
        if not augment:     # each speaker's tone, at its class's speed
            for wave, label in zip(waves.numpy(), labels.tolist()):
                speaker, factor = label % 6, SPEEDS[label // 6]
                sounding = np.flatnonzero(np.abs(wave) > 1)        # a short file's samples, without its padding
                frequency = peak_frequency(wave[sounding[0]:sounding[-1] + 1])
                assert frequency == pytest.approx((200.0 + 100 * speaker) * factor, abs=8)
    # workers compute with one thread each, so any worker count gives the same batches; the main process
    # (--nDataLoaderThread 0) may round the resampling's sums in another order: within a float32 rounding
    one, two = ([waves for waves, _, _ in torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_groups, num_workers=workers)] for workers in (1, 2))
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    assert all(torch.allclose(a, b[0], rtol=1e-6, atol=1e-2) for a, b in zip(one, batches))   # int16 scale


def test_nspeakers_counts_every_speed_class_and_a_smaller_one_is_an_error(tiny_corpus, tmp_path, capsys):
    data = ["--train_list", tiny_corpus["train_list"], "--test_list", tiny_corpus["test_list"],
            "--train_path", tiny_corpus["train_path"], "--test_path", tiny_corpus["test_path"]]
    assert training_classes(None, 120, 40, "list") == 120 and training_classes(130, 120, 40, "list") == 130
    code = trainSpeakerNet.main(["--model", "ResNetSE34L", "--trainfunc", "mp_balance", "--speed_perturb",
                                 "--nSpeakers", "100", "--save_path", str(tmp_path / "run")] + data)
    assert code == 2
    assert f"--nSpeakers 100 is smaller than the 120 classes of --speed_perturb (40 speakers of " \
           f"{tiny_corpus['train_list']} x 3 speeds)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_run_with_speed_perturbation_trains_three_classes_per_speaker(tiny_corpus, tmp_path):
    save_path = tmp_path / "run"
    result = run_cli("--model", "ResNetSE34L", "--trainfunc", "aamsoftmax", "--speed_perturb", "--max_epoch", "1",
                     "--max_frames", "50", "--batch_size", "8", "--nDataLoaderThread", "2", "--nOut", "32",
                     "--eval_frames", "0", "--train_list", tiny_corpus["train_list"],
                     "--test_list", tiny_corpus["test_list"], "--train_path", tiny_corpus["train_path"],
                     "--test_path", tiny_corpus["test_path"], "--save_path", save_path)
    assert result.returncode == 0, result.stderr[-3000:]
    config = yaml.safe_load((save_path / "config.yaml").read_text())
    assert config["speed_perturb"] is True and config["nSpeakers"] == 120
    checkpoint = torch.load(save_path / "model" / "model000000001.model", weights_only=True)
    assert checkpoint["model_state_dict"]["__L__.weight"].shape == (120, 32)   # one AAM class per speaker x speed
    assert checkpoint["run"]["options"]["speed_perturb"] is True               # a resume without it is refused


def test_perturbing_twice_or_unaligned_labels_are_user_errors():
    perturbed = speed_perturbed(recorded_list([3, 4]), SPEEDS)
    with pytest.raises(SpeakerNetError, match="already speed-perturbed"):
        speed_perturbed(perturbed, SPEEDS)
    shuffled = perturbed.labels.copy()
    shuffled[[0, -1]] = shuffled[[-1, 0]]
    with pytest.raises(SpeakerNetError, match="labels are not 3 speed blocks of one list"):
        GroupBatchSampler(shuffled, (2,), 2, 100, copies=3)
