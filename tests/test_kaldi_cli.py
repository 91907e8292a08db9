"""Kaldi data directories on the command line: --train_data, --test_data with a Kaldi trials file, --allow_pipes,
--max_overshoot, and the errors of bad directories (one ``error:`` line naming file and line, exit 2, nothing
written).

The directories are written as corpus tools write them: segment times with two decimals, so that a recording's
last segment ends a fraction of a millisecond past it (Kaldi cuts it at the end, as these runs must)."""

import os
import pickle
import re
from collections import defaultdict

import numpy as np
import pytest
import soundfile as sf
import torch

import trainSpeakerNet
from spknet.data import SpeedPerturbedSource
from spknet.data.kaldi import KaldiAudio, KaldiSource, data_dir_digest, load_kaldi_dir
from spknet.identity import run_differences
from spknet.training.run import run_identity
from trainSpeakerNet import spec_from_argv

TRIMMED = 7        # samples cut off the end of each two-segment recording: its last segment, written "5.00", ends
                   # 0.44 ms past it, as two-decimal times end past recordings of real corpora
FAST = ["--model", "ResNetSE34L", "--trainfunc", "softmaxproto", "--nPerSpeaker", "2", "--max_frames", "50",
        "--eval_frames", "50", "--batch_size", "8", "--nDataLoaderThread", "2", "--max_epoch", "1"]


def utterance_id(path: str) -> str:
    return os.path.splitext(path)[0].replace("/", "-")


def write_kaldi_dir(folder, files: dict[str, list[str]], root: str) -> dict[str, np.ndarray]:
    """A Kaldi data directory of ``files`` (speaker -> paths under ``root``): each speaker's first two files
    concatenated, less the last :data:`TRIMMED` samples, into one recording described by two segments with
    times of two decimals (the second ends past the recording), the others each a recording of its own (a
    segment to its end, -1). Returns each utterance's samples."""
    os.makedirs(folder / "audio", exist_ok=True)
    wav_scp, utt2spk, segments, samples = [], [], [], {}
    for speaker, paths in sorted(files.items()):
        first, second = (sf.read(os.path.join(root, path), dtype="int16")[0] for path in paths[:2])
        recording = f"{speaker}-pair"
        second = second[:-TRIMMED]
        sf.write(folder / "audio" / f"{recording}.wav", np.concatenate([first, second]), 16000, subtype="PCM_16")
        wav_scp.append(f"{recording} {folder / 'audio' / recording}.wav")
        split, end = len(first) / 16000, (len(first) + len(second) + TRIMMED) / 16000
        assert split == round(split, 2) and end == round(end, 2)        # what two decimals write exactly
        for path, start, stop in ((paths[0], 0, split), (paths[1], split, end)):
            segments.append(f"{utterance_id(path)} {recording} {start:.2f} {stop:.2f}")
        for path, wave in zip(paths[:2], (first, second)):
            samples[utterance_id(path)] = wave
        for path in paths[2:]:
            wav_scp.append(f"{utterance_id(path)}-rec {os.path.join(root, path)}")
            segments.append(f"{utterance_id(path)} {utterance_id(path)}-rec 0 -1")
            samples[utterance_id(path)] = sf.read(os.path.join(root, path), dtype="int16")[0]
        utt2spk += [f"{utterance_id(path)} {speaker}" for path in paths]
    for name, lines in (("wav.scp", wav_scp), ("utt2spk", sorted(utt2spk)), ("segments", segments)):
        (folder / name).write_text("\n".join(lines) + "\n")
    return samples


def speaker_files(lines) -> dict[str, list[str]]:
    files = defaultdict(list)
    for path in lines:
        files[path.split("/")[0]].append(path)
    return files


@pytest.fixture(scope="module")
def kaldi_corpus(tiny_corpus, tmp_path_factory):
    """The tiny corpus as Kaldi data directories: train/ (from the training list), test/ (every file of the trial
    list) with a Kaldi ``trials`` file of the same trials."""
    base = tmp_path_factory.mktemp("kaldi")
    train = [line.split()[1] for line in open(tiny_corpus["train_list"]).read().splitlines() if line.strip()]
    trials = [line.split() for line in open(tiny_corpus["test_list"]).read().splitlines() if line.strip()]
    test = sorted({path for _, enroll, test in trials for path in (enroll, test)})
    train_samples = write_kaldi_dir(base / "train", speaker_files(train), tiny_corpus["train_path"])
    test_samples = write_kaldi_dir(base / "test", speaker_files(test), tiny_corpus["test_path"])
    (base / "test" / "trials").write_text("".join(
        f"{utterance_id(enroll)} {utterance_id(test)} {'target' if label == '1' else 'nontarget'}\n"
        for label, enroll, test in trials))
    return {"train": base / "train", "test": base / "test", "trials": base / "test" / "trials",
            "train_samples": train_samples, "test_samples": test_samples}


def test_segments_read_exactly_their_utterances(kaldi_corpus):
    data = load_kaldi_dir(str(kaldi_corpus["train"]))
    source, audio = KaldiSource(data), KaldiAudio(data)
    for i in (0, 1, 2, len(data) - 1):
        expected = kaldi_corpus["train_samples"][data.keys[i]].astype(np.float32)
        with source.open(i) as utterance:
            assert utterance.frames == len(expected)
            np.testing.assert_array_equal(utterance.read(), expected)
            np.testing.assert_array_equal(utterance.read(100, 500), expected[100:600])
        with audio.open(data.keys[i]) as utterance:
            np.testing.assert_array_equal(utterance.read(), expected)
    assert source.speakers == sorted(source.speakers) and len(source.speakers) == 40
    copy = pickle.loads(pickle.dumps(source))        # what a loader worker started by spawn receives
    with copy.open(5) as utterance:
        np.testing.assert_array_equal(utterance.read(), kaldi_corpus["train_samples"][data.keys[5]])
    assert copy.data.index == data.index


def test_speed_perturbation_of_a_kaldi_source(kaldi_corpus):
    data = load_kaldi_dir(str(kaldi_corpus["train"]))
    perturbed = SpeedPerturbedSource(KaldiSource(data), (1.0, 0.9, 1.1))
    assert len(perturbed) == 3 * len(data) and perturbed.copies == 3
    assert perturbed.labels[len(data) + 4] == data.labels[4] + 40 and perturbed.speed(len(data) + 4) == 0.9
    assert perturbed.speakers[40] == f"{data.speakers[0]}_speed0.9" and perturbed.name(len(data) + 4) == data.keys[4]
    with perturbed.open(2 * len(data) + 1) as utterance:
        np.testing.assert_array_equal(utterance.read(), kaldi_corpus["train_samples"][data.keys[1]])


def test_the_run_identity_records_the_data_dir_by_content(kaldi_corpus, small_dir, tmp_path):
    def identity(folder):
        spec = spec_from_argv(["--train_data", str(folder), "--test_list", str(kaldi_corpus["trials"]), *FAST])
        return run_identity(spec, spec.model)

    saved = identity(kaldi_corpus["train"])
    assert saved["lists"]["train_data"] == data_dir_digest(str(kaldi_corpus["train"]))
    assert run_differences(saved, identity(small_dir)) == []       # the same files elsewhere: the same data
    lines = (small_dir / "utt2spk").read_text().splitlines()
    (small_dir / "utt2spk").write_text("\n".join(lines[:-1] + [lines[-1].split()[0] + " someone-else"]) + "\n")
    assert run_differences(saved, identity(small_dir)) == [("train_data", None, None)]


def run_main(capsys, *argv):
    code = trainSpeakerNet.main([str(item) for item in argv])
    return code, capsys.readouterr().err


@pytest.mark.slow
def test_train_on_a_kaldi_dir_and_evaluate_kaldi_trials(kaldi_corpus, tmp_path, capsys):
    save_path = tmp_path / "run"
    code, err = run_main(capsys, "--train_data", kaldi_corpus["train"], "--test_list", kaldi_corpus["trials"],
                         "--test_data", kaldi_corpus["test"], "--save_path", save_path, *FAST)
    assert code == 0, err[-3000:]
    lines = [line for line in (save_path / "result" / "scores.txt").read_text().splitlines()
             if line.startswith("IT 1,")]
    assert len(lines) == 1 and "VEER" in lines[0]
    checkpoint = torch.load(save_path / "model" / "model000000001.model", weights_only=True)
    assert checkpoint["run"]["lists"]["train_data"] == data_dir_digest(str(kaldi_corpus["train"]))
    scores = tmp_path / "scores.txt"
    code, err = run_main(capsys, "--eval", "--initial_model", save_path / "model" / "model000000001.model",
                         "--test_list", kaldi_corpus["trials"], "--test_data", kaldi_corpus["test"],
                         "--eval_frames", "50", "--nDataLoaderThread", "0", "--save_scores", scores,
                         "--save_path", tmp_path / "eval", "--score_norm", "asnorm", "--cohort_size", "10",
                         "--train_data", kaldi_corpus["train"])       # the AS-norm cohort: its utterances
    assert code == 0, err[-3000:]
    written = [line.split() for line in scores.read_text().splitlines()]
    trials = [line.split() for line in kaldi_corpus["trials"].read_text().splitlines()]
    assert [row[2:] for row in written] == [row[:2] for row in trials]


@pytest.fixture
def small_dir(tmp_path, kaldi_corpus):
    """A copy of the training directory's files (the audio shared) that a test can spoil."""
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("wav.scp", "utt2spk", "segments"):
        (folder / name).write_text((kaldi_corpus["train"] / name).read_text())
    return folder


def replace_line(path, number: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


def spoil(folder, case: str) -> str:
    """Make ``folder`` bad as ``case`` says; returns the error expected (a regex)."""
    if case == "no wav.scp":
        (folder / "wav.scp").unlink()
        return rf"{folder}: not a Kaldi data directory: no wav.scp"
    if case == "no utt2spk":
        (folder / "utt2spk").unlink()
        return rf"{folder}: not a Kaldi data directory: no utt2spk or spk2utt"
    if case == "no speaker":
        lines = (folder / "utt2spk").read_text().splitlines()
        (folder / "utt2spk").write_text("\n".join(lines[1:]) + "\n")
        key = lines[0].split()[0]
        number = next(i for i, line in enumerate((folder / "segments").read_text().splitlines(), 1)
                      if line.split()[0] == key)
        return rf"{folder}/segments:{number}: utterance '{key}' has no speaker in utt2spk"
    if case == "overshoot":
        key, recording, start, end = (folder / "segments").read_text().splitlines()[1].split()
        replace_line(folder / "segments", 2, f"{key} {recording} {start} {float(end) + 0.5:.2f}")
        return (rf"{folder}/segments:2: segment '{key}' ends at 5.5 s, past the end of recording '{recording}' "
                rf"\(4.99956 s\) by 0.5004 s, not less than --max_overshoot 0.5 s$")
    if case == "segment outside":
        key, recording, start, _ = (folder / "segments").read_text().splitlines()[1].split()
        replace_line(folder / "segments", 2, f"{key} {recording} {start} 99.5")
        return rf"{folder}/segments:2: segment '{key}' ends at 99.5 s, past the end of recording '{recording}'"
    if case == "pipe":
        recording, path = (folder / "wav.scp").read_text().splitlines()[0].split()
        replace_line(folder / "wav.scp", 1, f"{recording} cat {path} |")
        return rf"{folder}/wav.scp:1: 'cat {path} \|' is a pipe: .*--allow_pipes"
    raise ValueError(case)


@pytest.mark.parametrize("case", ["no wav.scp", "no utt2spk", "no speaker", "segment outside", "overshoot", "pipe"])
def test_bad_train_data_is_one_error_line(small_dir, kaldi_corpus, tmp_path, capsys, case):
    expected = spoil(small_dir, case)
    save_path = tmp_path / "run"
    code, err = run_main(capsys, "--train_data", small_dir, "--test_list", kaldi_corpus["trials"],
                         "--test_data", kaldi_corpus["test"], "--save_path", save_path, *FAST)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(expected, errors[0]), err
    assert "Traceback" not in err and not save_path.exists()


@pytest.mark.parametrize("case", ["no speaker", "segment outside", "overshoot"])
def test_bad_test_data_is_one_error_line(small_dir, kaldi_corpus, tmp_path, capsys, case):
    expected = spoil(small_dir, case)
    save_path = tmp_path / "run"
    code, err = run_main(capsys, "--eval", "--initial_model", tmp_path / "absent.model", "--test_list",
                         kaldi_corpus["trials"], "--test_data", small_dir, "--save_path", save_path)
    assert code == 2 and re.search(expected, err), err
    assert "Traceback" not in err and not save_path.exists()


def test_max_overshoot_0_refuses_the_two_decimal_ends(small_dir, kaldi_corpus, tmp_path, capsys):
    key, recording = (small_dir / "segments").read_text().splitlines()[1].split()[:2]
    save_path = tmp_path / "run"
    code, err = run_main(capsys, "--train_data", small_dir, "--test_list", kaldi_corpus["trials"], "--test_data",
                         kaldi_corpus["test"], "--save_path", save_path, "--max_overshoot", "0", *FAST)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {small_dir}/segments:2: segment '{key}' ends at 5 s, past the end of recording "
                      f"'{recording}' (4.99956 s) by 0.0004375 s, not less than --max_overshoot 0 s"], err
    assert not save_path.exists()


def test_evaluating_two_decimal_segments(kaldi_corpus, random_checkpoint, tmp_path, capsys, one_thread):
    """--eval on the test directory: one INFO line counts the segments cut at their recording's end, and trials
    between those segments (each speaker's two segments, a target; the cut ones of two speakers, a nontarget)
    are scored from them."""
    split = [line.split() for line in (kaldi_corpus["test"] / "segments").read_text().splitlines()]
    pairs = [(first[0], second[0]) for first, second in zip(split, split[1:]) if first[1] == second[1]]
    trials = tmp_path / "trials"
    trials.write_text("".join(f"{first} {second} target\n{second} {pairs[k - 1][1]} nontarget\n"
                              for k, (first, second) in enumerate(pairs[:4])))
    scores = tmp_path / "scores.txt"
    code = trainSpeakerNet.main([str(item) for item in (
        "--model", "ResNetSE34L", "--trainfunc", "mp_balance", "--nOut", "16", "--eval", "--initial_model",
        random_checkpoint, "--test_list", trials, "--test_data", kaldi_corpus["test"], "--eval_frames", "50",
        "--nDataLoaderThread", "0", "--save_scores", scores, "--save_path", tmp_path / "run")])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    assert (f"{kaldi_corpus['test']}/segments: {len(pairs)} segment(s) end past their recording, by 0.0004375 s at "
            f"most (less than --max_overshoot 0.5 s): cut at the recording's end") in out.splitlines()
    assert len(scores.read_text().splitlines()) == 8


def test_a_trial_key_not_in_the_test_data_names_its_line(kaldi_corpus, tmp_path, capsys):
    trials = tmp_path / "trials"
    lines = kaldi_corpus["trials"].read_text().splitlines()
    enroll, _, label = lines[2].split()
    lines[2] = f"{enroll} nobody-0001 {label}"
    trials.write_text("\n".join(lines) + "\n")
    save_path = tmp_path / "run"
    code, err = run_main(capsys, "--train_data", kaldi_corpus["train"], "--test_list", trials, "--test_data",
                         kaldi_corpus["test"], "--save_path", save_path, *FAST)
    assert code == 2
    assert re.search(rf"^error: {trials}:3: trial key 'nobody-0001' not found: there is no utterance "
                     rf"'nobody-0001' of {kaldi_corpus['test']}$", err, re.M), err
    assert not save_path.exists()


def test_pipes_run_with_allow_pipes(small_dir, kaldi_corpus, tmp_path):
    spoil(small_dir, "pipe")
    data = load_kaldi_dir(str(small_dir), allow_pipes=True)
    first = next(i for i, key in enumerate(data.keys) if data.recording[i] == 0)
    with KaldiSource(data).open(first) as utterance:
        np.testing.assert_array_equal(utterance.read(), kaldi_corpus["train_samples"][data.keys[first]])


def test_train_list_and_train_data_exclude_each_other(tiny_corpus, kaldi_corpus, tmp_path, capsys):
    code, err = run_main(capsys, "--train_list", tiny_corpus["train_list"], "--train_data", kaldi_corpus["train"],
                         "--test_list", tiny_corpus["test_list"], "--save_path", tmp_path / "run", *FAST)
    assert code == 2 and "give one of them" in err
