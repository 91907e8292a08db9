"""Unreadable training files: one ``error:`` line naming the file and how to go on (never a loader worker's
traceback), or, with --max_bad_files N, up to N skipped, warned about, listed in result/bad_files.txt and counted
on the epoch's INFO line."""

import os
import shutil

import numpy as np
import pytest
import torch

import trainSpeakerNet
from spknet.data import Group, TrainDataset, TrainList
from spknet.errors import SpeakerNetError
from tests.helpers import run_cli

FAST = ["--model", "ResNetSE34L", "--trainfunc", "softmaxproto", "--nPerSpeaker", "2", "--max_frames", "50",
        "--eval_frames", "50", "--batch_size", "8", "--nDataLoaderThread", "2", "--max_epoch", "1",
        "--test_interval", "2"]


@pytest.fixture
def bad_list(tiny_corpus, tmp_path):
    """The tiny corpus's training list with two files replaced: a WAV cut after 50 samples (its header announces
    2.5 s) and a zero-byte file."""
    lines = open(tiny_corpus["train_list"]).read().splitlines()
    entries = [(line.split()[0], os.path.join(tiny_corpus["train_path"], line.split()[1])) for line in lines]
    truncated, empty = tmp_path / "truncated.wav", tmp_path / "empty.wav"
    shutil.copy(entries[3][1], truncated)
    with open(truncated, "r+b") as handle:
        handle.truncate(44 + 100)
    empty.write_bytes(b"")
    entries[3] = (entries[3][0], str(truncated))
    entries[20] = (entries[20][0], str(empty))
    train_list = tmp_path / "train.txt"
    train_list.write_text("".join(f"{speaker} {path}\n" for speaker, path in entries))
    return {"train_list": train_list, "bad": [str(truncated), str(empty)]}


def train(tiny_corpus, bad_list, save_path, *extra):
    return run_cli("--train_list", bad_list["train_list"], "--train_path", "", "--test_list",
                   tiny_corpus["test_list"], "--test_path", tiny_corpus["test_path"], "--save_path", save_path,
                   *FAST, *extra)


@pytest.mark.slow
def test_an_unreadable_file_ends_the_run_with_one_error_line(tiny_corpus, bad_list, tmp_path):
    result = train(tiny_corpus, bad_list, tmp_path / "run")
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert any(f"training file {path} cannot be read" in errors[0] for path in bad_list["bad"]), errors
    assert "--max_bad_files N" in errors[0]
    assert "Traceback" not in result.stderr and "DataLoader worker" not in result.stderr


@pytest.mark.slow
def test_max_bad_files_skips_lists_and_counts_them(tiny_corpus, bad_list, tmp_path):
    save_path = tmp_path / "run"
    result = train(tiny_corpus, bad_list, save_path, "--max_bad_files", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    listed = (save_path / "result" / "bad_files.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in listed) == sorted(bad_list["bad"])
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if "skipping unreadable" in line]
    assert len(warnings) == 2
    info = [line for line in (save_path / "result" / "scores.txt").read_text().splitlines()
            if line.startswith("INFO epoch 1:")]
    assert len(info) == 1 and info[0].endswith(", bad files 2"), info


@pytest.mark.slow
def test_one_more_than_max_bad_files_ends_the_run(tiny_corpus, bad_list, tmp_path):
    result = train(tiny_corpus, bad_list, tmp_path / "run", "--max_bad_files", "1")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "one more than --max_bad_files 1" in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr


class Unreadable(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, index):
        raise SpeakerNetError("some.wav: cannot read audio (broken)")


def test_an_error_in_a_loader_worker_reaches_the_user_as_its_own_line(monkeypatch, capsys):
    def run(args):
        next(iter(torch.utils.data.DataLoader(Unreadable(), num_workers=1)))

    monkeypatch.setattr(trainSpeakerNet, "run", run)
    assert trainSpeakerNet.main([]) == 2
    assert capsys.readouterr().err == "error: some.wav: cannot read audio (broken)\n"


def test_the_dataset_marks_a_group_it_cannot_read(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    dataset = TrainDataset(TrainList([str(empty)], np.array([0]), ["amy"]), 50)
    waves, label, unreadable = dataset[Group(files=(0,), label=0, crop_seed=1)]
    assert waves is None and label == 0 and unreadable.name == str(empty)
    assert unreadable.reason.startswith("cannot read audio") and "\n" not in unreadable.reason
