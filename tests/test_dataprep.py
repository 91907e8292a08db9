"""Synthetic corpus: layout, list formats, determinism, argument checking, CLI."""

import hashlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import dataprep
from spknet.data import synthetic as sc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(speakers=12, utterances=5, test_speakers=6, test_utterances=6, trials=120, min_duration=2.0,
             max_duration=3.0, seed=11)
MICRO = dict(speakers=5, utterances=3, test_speakers=3, test_utterances=4, trials=16, min_duration=1.0,
             max_duration=1.5)
PATH_RE = re.compile(r"^(id\d{5})/sess\d{2}/\d{5}\.wav$")


def read_lines(path):
    with open(path) as f:
        return [line.split() for line in f.read().splitlines()]


def tree_digest(root):
    """{relative path: sha256} of every file under root."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return sc.make_corpus(str(tmp_path_factory.mktemp("small_corpus")), **SMALL)


def test_make_corpus_returns_paths(small):
    assert small["train_list"] == os.path.join(small["save_path"], "train_list.txt")
    assert small["test_list"] == os.path.join(small["save_path"], "veri_test.txt")
    assert small["train_path"] == small["test_path"] == os.path.join(small["save_path"], "wav")
    assert small["files"] == SMALL["speakers"] * SMALL["utterances"] + SMALL["test_speakers"] * SMALL["test_utterances"]
    assert SMALL["min_duration"] * small["files"] <= small["seconds"] <= SMALL["max_duration"] * small["files"]


def test_train_list_layout(small):
    lines = read_lines(small["train_list"])
    assert len(lines) == SMALL["speakers"] * SMALL["utterances"]
    per_speaker = {}
    for parts in lines:
        assert len(parts) == 2
        spk, rel = parts
        m = PATH_RE.match(rel)
        assert m and m.group(1) == spk, rel
        assert os.path.isfile(os.path.join(small["train_path"], rel))
        per_speaker.setdefault(spk, []).append(rel)
    assert len(per_speaker) == SMALL["speakers"]
    assert all(len(v) == SMALL["utterances"] for v in per_speaker.values())
    assert len({rel for _, rel in lines}) == len(lines)
    # several sessions per speaker
    assert all(len({r.split("/")[1] for r in v}) >= 2 for v in per_speaker.values())


def test_wav_format(small):
    files = [os.path.join(d, n) for d, _, ns in os.walk(small["train_path"]) for n in ns]
    assert len(files) == small["files"]  # nothing but the listed files
    peaks = []
    for path in files[::4]:
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
        assert SMALL["min_duration"] - 1e-3 <= info.duration <= SMALL["max_duration"] + 1e-3
        x, _ = sf.read(path, dtype="int16")
        peak = int(np.abs(x.astype(np.int32)).max())
        assert 0 < peak < 32767  # normalised, never clipped
        assert np.isfinite(x).all() and x.std() > 10
        peaks.append(peak)
    assert np.std(np.log(peaks)) > 0.2  # output level is randomised per file


def test_trial_list(small):
    trials = read_lines(small["test_list"])
    assert len(trials) == SMALL["trials"]
    train_speakers = {spk for spk, _ in read_lines(small["train_list"])}
    test_speakers, cross = set(), 0
    for parts in trials:
        assert len(parts) == 3 and parts[0] in ("0", "1")
        a, b = PATH_RE.match(parts[1]), PATH_RE.match(parts[2])
        assert a and b and parts[1] != parts[2]
        assert (a.group(1) == b.group(1)) == (parts[0] == "1")
        for rel in parts[1:]:
            assert os.path.isfile(os.path.join(small["test_path"], rel))
        test_speakers |= {a.group(1), b.group(1)}
        cross += parts[0] == "1" and parts[1].split("/")[1] != parts[2].split("/")[1]
    assert len(test_speakers) == SMALL["test_speakers"]
    assert not test_speakers & train_speakers
    n_target = sum(p[0] == "1" for p in trials)
    assert n_target == SMALL["trials"] // 2
    assert cross >= 0.8 * n_target  # target pairs mostly across sessions
    assert len({tuple(sorted(p[1:])) for p in trials}) == len(trials)  # no repeated pair


def test_same_seed_is_byte_identical_whatever_the_workers(tmp_path):
    a = sc.make_corpus(str(tmp_path / "a"), seed=5, workers=1, **MICRO)
    b = sc.make_corpus(str(tmp_path / "b"), seed=5, workers=2, **MICRO)
    da, db = tree_digest(a["save_path"]), tree_digest(b["save_path"])
    assert len(da) == a["files"] + 2
    assert da == db


def test_other_seed_differs(tmp_path):
    a = tree_digest(sc.make_corpus(str(tmp_path / "a"), seed=5, **MICRO)["save_path"])
    b = tree_digest(sc.make_corpus(str(tmp_path / "b"), seed=6, **MICRO)["save_path"])
    assert a["train_list.txt"] != b["train_list.txt"]
    assert not set(a.values()) & set(b.values())


def test_test_split_does_not_depend_on_training_speakers(tmp_path):
    a = sc.make_corpus(str(tmp_path / "a"), seed=5, **MICRO)
    b = sc.make_corpus(str(tmp_path / "b"), seed=5, **{**MICRO, "speakers": 2})
    da, db = tree_digest(a["save_path"]), tree_digest(b["save_path"])
    assert da["veri_test.txt"] == db["veri_test.txt"]
    test_files = {p for parts in read_lines(a["test_list"]) for p in parts[1:]}
    assert all(da[os.path.join("wav", p)] == db[os.path.join("wav", p)] for p in test_files)
    assert da["train_list.txt"] != db["train_list.txt"]


def test_speaker_ids_are_not_generation_order():
    train, test = sc._speaker_ids(sc.CorpusConfig(speakers=50, test_speakers=10, seed=0))
    assert len(set(train + test)) == 60
    assert train != sorted(train) and test != sorted(test)


def test_synthesis_is_speech_like():
    spk, ses = sc.speaker_params(0, sc.TRAIN, 0), sc.session_params(0, sc.TRAIN, 0, 1)
    x = sc.synthesize(spk, ses, sc._rng(0, 9), 1.7)
    assert x.shape == (int(round(1.7 * sc.SR)),) and np.isfinite(x).all()
    # frame energies fluctuate (syllables, pauses), unlike stationary noise
    frames = x[: len(x) // 400 * 400].reshape(-1, 400)
    energy_db = 10 * np.log10((frames**2).mean(axis=1) + 1e-12)
    assert energy_db.max() - np.percentile(energy_db, 10) > 10


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(speakers=0), "speakers must be >= 1"),
        (dict(utterances=0), "utterances must be >= 1"),
        (dict(test_speakers=1), "test_speakers must be >= 2"),
        (dict(test_utterances=1), "test_utterances must be >= 2"),
        (dict(trials=1), "trials must be >= 2"),
        (dict(seed=-1), "seed must be >= 0"),
        (dict(min_duration=3.0, max_duration=2.0), "min_duration"),
        (dict(test_speakers=2, test_utterances=2, trials=10), "target pairs"),
        (dict(workers=0), "workers"),
    ],
)
def test_make_corpus_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sc.make_corpus(str(tmp_path / "c"), **{**MICRO, **kwargs})
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--synthetic", "--speakers", "0"], "speakers must be >= 1"),
        (["--synthetic", "--test_speakers", "1"], "test_speakers must be >= 2"),
        (["--synthetic", "--workers", "0"], "--workers must be >= 1"),
        (["--synthetic", "--speakers", "two"], "invalid int value"),
        ([], "pass --synthetic"),
    ],
)
def test_cli_rejects_bad_arguments(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        dataprep.main(argv + ["--save_path", str(tmp_path / "c")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_cli_subprocess(tmp_path):
    out = tmp_path / "corpus"
    cmd = [sys.executable, os.path.join(ROOT, "dataprep.py"), "--synthetic", "--save_path", str(out),
           "--speakers", "4", "--utterances", "2", "--test_speakers", "2", "--test_utterances", "3",
           "--trials", "6", "--min_duration", "1", "--max_duration", "1.2", "--seed", "3", "--workers", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "wrote 14 files" in res.stdout and "files/s" in res.stdout
    assert len(read_lines(out / "train_list.txt")) == 8 and len(read_lines(out / "veri_test.txt")) == 6
    # the library call with the same arguments gives the same bytes
    lib = sc.make_corpus(str(tmp_path / "lib"), speakers=4, utterances=2, test_speakers=2, test_utterances=3,
                         trials=6, min_duration=1.0, max_duration=1.2, seed=3)
    assert tree_digest(out) == tree_digest(lib["save_path"])

    bad = subprocess.run(cmd[:5] + ["--speakers", "0"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "speakers must be >= 1" in bad.stderr
