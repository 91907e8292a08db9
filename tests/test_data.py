"""Lists, audio crops (the original's loadWAV) and the batch samplers."""

import numpy as np
import pytest
import soundfile as sf

from spknet.data import GroupBatchSampler, check_files_exist, load_wav, max_audio_samples, read_train_list
from spknet.errors import SpeakerNetError
from spknet.evaluation import read_trial_list
from tests.helpers import FixedRandom, original_loadwav, write_wav


@pytest.mark.parametrize("length", [3000, 16240, 16241, 50000])
@pytest.mark.parametrize("evalmode", [True, False])
def test_load_wav_matches_the_original(tmp_path, length, evalmode):
    audio = np.random.default_rng(length).integers(-30000, 30000, length).astype(np.int16)
    path = write_wav(tmp_path / "x.wav", audio)
    got = load_wav(path, 100, evalmode=evalmode, rng=FixedRandom(0.37))
    want = original_loadwav(audio, 100, evalmode, random_value=0.37)
    assert got.dtype == np.float32 and got.shape == want.shape == ((10 if evalmode else 1), max_audio_samples(100))
    assert np.array_equal(got, want)        # int16 scale kept, exact


def test_whole_file_mode(tmp_path):
    audio = np.arange(-5000, 5000, dtype=np.int16)
    got = load_wav(write_wav(tmp_path / "x.wav", audio), 0, evalmode=True)
    assert got.shape == (1, 10000) and np.array_equal(got[0], audio)


@pytest.mark.parametrize("kind,message", [("short", "shorter than one 10-ms hop"),
                                          ("resampled_short", "shorter than one 10-ms hop"),
                                          ("garbage", "cannot read audio")])
def test_bad_audio_is_a_clear_error(tmp_path, kind, message):
    path = tmp_path / "bad.wav"
    if kind == "resampled_short":           # 79 samples at 8 kHz: 158 at 16 kHz
        write_wav(path, np.zeros(79), rate=8000)
    elif kind == "short":
        write_wav(path, np.zeros(100))
    else:
        path.write_bytes(b"RIFF....WAVEfmt garbage")
    with pytest.raises(SpeakerNetError, match=message) as raised:
        load_wav(str(path), 100)
    assert str(path) in str(raised.value)


def test_non_finite_samples_are_an_error(tmp_path):
    path = tmp_path / "nan.wav"
    samples = np.zeros(20000, dtype=np.float32)
    samples[1234] = np.nan
    sf.write(path, samples, 16000, subtype="FLOAT")
    with pytest.raises(SpeakerNetError, match=r"nan.wav: non-finite \(NaN/inf\) samples"):
        load_wav(str(path), 100)


@pytest.mark.parametrize("evalmode", [True, False])
def test_truncated_file_is_an_error(tmp_path, evalmode):
    path = tmp_path / "cut.wav"
    write_wav(path, np.arange(40000) % 3000)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3])          # the header still announces 40000 samples
    try:
        crops = load_wav(str(path), 100, evalmode=evalmode, rng=FixedRandom(0.99))
    except SpeakerNetError as error:
        assert "cut.wav: truncated file" in str(error)
    else:   # libsndfile may shorten the announced length itself: then the crops must still be whole
        assert crops.shape[1] == max_audio_samples(100)


def test_train_list_parsing_and_errors(tmp_path):
    good = tmp_path / "train.txt"
    good.write_text("idB b/1.wav\n\nidA a/1.wav\nidB b/2.wav\n")
    parsed = read_train_list(str(good), "/root")
    assert parsed.speakers == ["idA", "idB"] and parsed.labels.tolist() == [1, 0, 1]
    assert parsed.files[0] == "/root/b/1.wav"
    bad = tmp_path / "bad.txt"
    bad.write_text("idA a/1.wav\nidA\n")
    with pytest.raises(SpeakerNetError, match=rf"{bad}:2: expected '<speaker> <path.wav>'"):
        read_train_list(str(bad), "")
    with pytest.raises(SpeakerNetError, match="list file not found"):
        read_train_list(str(tmp_path / "missing.txt"), "")


def test_trial_list_parsing_and_errors(tmp_path):
    trials = tmp_path / "t.txt"
    trials.write_text("1 a.wav b.wav\n0 a.wav c.wav\n")
    assert [(t.label, t.enroll, t.test) for t in read_trial_list(str(trials))] == [(1, "a.wav", "b.wav"),
                                                                                  (0, "a.wav", "c.wav")]
    trials.write_text("a.wav b.wav\n")
    assert read_trial_list(str(trials))[0].label is None
    trials.write_text("1 a.wav b.wav\n2 a.wav c.wav\n")
    with pytest.raises(SpeakerNetError, match=rf"{trials}:2: expected '<label 0\|1>"):
        read_trial_list(str(trials))


def test_missing_files_are_counted_and_named(tmp_path):
    paths = [str(tmp_path / f"{i}.wav") for i in range(8)]
    with pytest.raises(SpeakerNetError, match=r"list.txt: 8 audio file\(s\) listed but not found") as raised:
        check_files_exist(paths, "list.txt")
    assert paths[0] in str(raised.value) and "and 3 more" in str(raised.value)


def labels_with(counts):
    return np.repeat(np.arange(len(counts)), counts)


@pytest.mark.parametrize("group_sizes", [(1,), (2,), (3,), (2, 3)])
def test_batches_hold_distinct_speakers_and_whole_groups(group_sizes):
    labels = labels_with(np.random.default_rng(0).integers(2, 30, size=40))
    sampler = GroupBatchSampler(labels, group_sizes, batch_size=8, max_seg_per_spk=12, seed=3)
    batches = list(sampler)
    assert batches and all(len(batch) == 8 for batch in batches)
    used = []
    for batch in batches:
        assert len({group.label for group in batch}) == 8
        for group in batch:
            assert len(group.files) in group_sizes
            assert all(labels[f] == group.label for f in group.files)
            used += group.files
    assert len(used) == len(set(used))                               # no utterance twice in an epoch
    per_speaker = np.bincount(labels[used], minlength=40)
    assert per_speaker.max() <= 12                                   # max_seg_per_spk
    if group_sizes == (2, 3):
        sizes_by_speaker = {}
        for batch in batches:
            for group in batch:
                sizes_by_speaker.setdefault(group.label, set()).add(len(group.files))
        assert all(len(sizes) == 1 for sizes in sizes_by_speaker.values())   # one group size per speaker per epoch
        assert {2, 3} <= set().union(*sizes_by_speaker.values())


def test_sampler_is_deterministic_per_seed_and_epoch():
    labels = labels_with([6] * 20)
    a = GroupBatchSampler(labels, (2,), 5, 100, seed=1)
    b = GroupBatchSampler(labels, (2,), 5, 100, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(2)
    assert list(a) != first
    b.set_epoch(2)
    assert list(a) == list(b)


def test_waiting_groups_are_kept_not_dropped():
    """Few speakers: the original dropped groups whose speaker was already in the batch; we keep them."""
    labels = labels_with([40] * 6)
    batches = list(GroupBatchSampler(labels, (2,), 6, 100, seed=0))
    assert len(batches) >= 17                     # 120 groups, 20 full batches at best


def test_unfillable_batch_is_a_clear_error():
    labels = labels_with([5] * 10 + [1] * 5)
    with pytest.raises(SpeakerNetError, match=r"batches of 12 groups can never be filled.*has 10"):
        GroupBatchSampler(labels, (2,), 12, 100)
    GroupBatchSampler(labels, (1,), 12, 100)      # one utterance each suffices for classification losses
