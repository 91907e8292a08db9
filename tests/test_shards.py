"""Tar shards: dataprep.py --make_shards writes them, --train_shards streams them (spknet/data/shards.py)."""

import hashlib
import io
import json
import os
import shutil
import tarfile

import numpy as np
import pytest
import soundfile as sf
import torch

import dataprep
import trainSpeakerNet
from spknet.data import read_train_list
from spknet.data.shards import ShardStream, make_shards, read_shard, resolve_shards
from spknet.errors import SpeakerNetError
from tests.helpers import run_cli

SHARD_SIZE = 50     # the tiny corpus: 40 speakers x 6 utterances -> 5 shards of 8 speakers


@pytest.fixture(scope="module")
def shards(tiny_corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    manifest = make_shards(tiny_corpus["train_list"], tiny_corpus["train_path"], str(folder), SHARD_SIZE, seed=3)
    return {"dir": folder, "manifest": manifest, "manifest_path": str(folder / "manifest.json")}


def members(path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(member.name, tar.extractfile(member).read()) for member in tar]


def copy_shards(shards, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(shards["dir"], target)
    return target


def stream(shards_dir, **options) -> ShardStream:
    settings = dict(group_sizes=(2,), batch_size=4, max_frames=20, max_seg_per_spk=100, seed=5)
    settings.update(options)
    return ShardStream(resolve_shards(str(shards_dir / "manifest.json")), **settings)


def same_batches(first, second) -> bool:
    return len(first) == len(second) and all(
        all(torch.equal(a, b) for a, b in zip(x, y)) for x, y in zip(first, second))


# ---- writing ----------------------------------------------------------------------------------------------------

def test_shards_hold_every_utterance_once_with_its_bytes_and_speaker(tiny_corpus, shards):
    listed = read_train_list(tiny_corpus["train_list"], tiny_corpus["train_path"])
    expected = {os.path.relpath(path, tiny_corpus["train_path"]): listed.speakers[label]
                for path, label in zip(listed.files, listed.labels)}
    manifest, seen, order = shards["manifest"], {}, []
    assert [entry["name"] for entry in manifest["shards"]] == [f"shard-{i:06d}.tar" for i in range(5)]
    for entry in manifest["shards"]:
        path = shards["dir"] / entry["name"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        assert path.stat().st_size == entry["bytes"]
        items = members(path)
        assert len(items) == 2 * entry["utterances"]
        for (audio_name, audio), (meta_name, meta) in zip(items[::2], items[1::2]):
            key = audio_name.split(".")[0]
            assert audio_name == f"{key}.wav" and meta_name == f"{key}.json"
            info = json.loads(meta)
            assert expected[info["path"]] == info["speaker"]
            assert audio == open(os.path.join(tiny_corpus["train_path"], info["path"]), "rb").read()
            assert info["duration"] == pytest.approx(2.5, abs=1e-3)
            seen[info["path"]] = info["speaker"]
            order.append(info["speaker"])
        counts = {name: order[-entry["utterances"]:].count(name) for name in set(order[-entry["utterances"]:])}
        assert entry["speakers"] == counts
    assert seen == expected
    assert manifest["utterances"] == len(expected) == sum(entry["utterances"] for entry in manifest["shards"])
    assert manifest["speakers"] == sorted(set(expected.values()))
    assert manifest["duration"] == pytest.approx(2.5 * len(expected), abs=0.01)
    # speaker-grouped: each speaker's utterances one after another, in a seeded speaker order
    runs = [speaker for i, speaker in enumerate(order) if i == 0 or order[i - 1] != speaker]
    assert len(runs) == len(set(runs)) == 40
    assert runs != sorted(runs)


def test_flac_shards_hold_the_same_samples(tiny_corpus, tmp_path):
    manifest = make_shards(tiny_corpus["train_list"], tiny_corpus["train_path"], str(tmp_path), 1000,
                           audio_format="flac")
    items = members(tmp_path / manifest["shards"][0]["name"])
    name, audio = items[0]
    assert name.endswith(".flac")
    path = os.path.join(tiny_corpus["train_path"], json.loads(items[1][1])["path"])
    assert np.array_equal(sf.read(io.BytesIO(audio), dtype="int16")[0], sf.read(path, dtype="int16")[0])


@pytest.mark.parametrize("case", ["missing file", "empty list"])
def test_make_shards_bad_input_is_one_error_line_and_writes_nothing(tiny_corpus, tmp_path, capsys, case):
    listing = tmp_path / "list.txt"
    lines = open(tiny_corpus["train_list"]).read().splitlines()[:4]
    listing.write_text("" if case == "empty list" else "\n".join(lines + ["id00001 nowhere/missing.wav"]) + "\n")
    out = tmp_path / "out"
    status = dataprep.main(["--make_shards", "--train_list", str(listing), "--train_path",
                            tiny_corpus["train_path"], "--shard_dir", str(out)])
    error = capsys.readouterr().err.strip()
    assert status == 2 and error.startswith("error: ") and str(listing) in error
    assert ("missing.wav" in error) if case == "missing file" else ("no utterances" in error)
    assert not out.exists()


# ---- resolving and reading --------------------------------------------------------------------------------------

def test_a_brace_pattern_and_the_manifest_name_the_same_shards(shards):
    pattern = str(shards["dir"] / "shard-{000000..000004}.tar")
    assert resolve_shards(pattern).urls == resolve_shards(shards["manifest_path"]).urls
    assert len(resolve_shards(str(shards["dir"] / "shard-{000001..000002}.tar")).urls) == 2


def test_urls_are_opened_through_webdataset(shards):
    shard_set = resolve_shards(f"file://{shards['dir']}/shard-{{000000..000001}}.tar")
    assert shard_set.manifest == f"file://{shards['dir']}/manifest.json"
    assert len(list(read_shard(shard_set.urls[1], shard_set.entries[1]))) == 48


def test_pipe_shards_need_allow_pipes(shards):
    pattern = f"pipe:cat {shards['dir']}/shard-{{000000..000001}}.tar"
    with pytest.raises(SpeakerNetError, match="--allow_pipes"):
        resolve_shards(pattern)
    shard_set = resolve_shards(pattern, allow_pipes=True)
    assert len(list(read_shard(shard_set.urls[0], shard_set.entries[0], allow_pipes=True))) == 48


def cli_error(shards_spec, tiny_corpus, tmp_path) -> str:
    result = run_cli("--train_shards", shards_spec, "--test_list", tiny_corpus["test_list"], "--test_path",
                     tiny_corpus["test_path"], "--model", "ResNetSE34L", "--trainfunc", "mp_balance",
                     "--save_path", tmp_path / "run", "--device", "cpu", "--batch_size", "4", timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.slow
def test_bad_shard_specs_are_one_error_line(shards, tiny_corpus, tmp_path):
    copy = copy_shards(shards, tmp_path)
    assert "no shard matches" in cli_error(str(copy / "shard-{000007..000009}.tar"), tiny_corpus, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"][1]["bytes"] += 512
    (copy / "manifest.json").write_text(json.dumps(manifest))
    error = cli_error(str(copy / "manifest.json"), tiny_corpus, tmp_path)
    assert "shard-000001.tar" in error and "manifest" in error
    manifest["shards"] = manifest["shards"][:1]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    error = cli_error(str(copy / "shard-{000000..000001}.tar"), tiny_corpus, tmp_path)
    assert "shard-000001.tar: not among the shards of its manifest" in error


def test_a_truncated_shard_names_the_shard_and_the_member(shards, tmp_path):
    copy = copy_shards(shards, tmp_path)
    path = copy / "shard-000002.tar"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(SpeakerNetError, match=r"shard-000002\.tar: damaged or truncated shard") as caught:
        list(read_shard(str(path)))
    assert "shard-000002.tar" in str(caught.value) and "after member 0000" in str(caught.value)
    with pytest.raises(SpeakerNetError, match="bytes, its manifest"):
        resolve_shards(str(copy / "manifest.json"))


def test_a_changed_shard_fails_its_checksum(shards, tmp_path):
    copy = copy_shards(shards, tmp_path)
    path = copy / "shard-000003.tar"
    data = bytearray(path.read_bytes())
    data[2000] ^= 0xFF          # inside the first audio member: same size, other bytes
    path.write_bytes(bytes(data))
    shard_set = resolve_shards(str(copy / "manifest.json"))
    with pytest.raises(SpeakerNetError, match=r"shard-000003\.tar: SHA-256 differs"):
        list(read_shard(shard_set.urls[3], shard_set.entries[3]))


# ---- streaming --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("group_sizes", [(2,), (2, 3)])
def test_stream_batches_have_distinct_speakers_and_full_groups(shards, group_sizes):
    source = stream(shards["dir"], group_sizes=group_sizes)
    batches = list(source)
    assert len(batches) == len(source) > 0
    for waves, labels, sizes in batches:
        assert len(sizes) == 4 and set(sizes.tolist()) <= set(group_sizes)
        assert waves.shape == (int(sizes.sum()), 20 * 160 + 240)
        groups = torch.split(labels, sizes.tolist())
        assert all(len(set(group.tolist())) == 1 for group in groups)
        assert len({int(group[0]) for group in groups}) == 4


def test_two_ranks_read_disjoint_shards_and_make_as_many_batches(shards):
    ranks = [stream(shards["dir"], rank=rank, world_size=2) for rank in (0, 1)]
    for epoch in (1, 2):
        read = []
        for source in ranks:
            source.set_epoch(epoch)
            read.append({index for indices, _ in source._assignments(source.rank) for index in indices})
        assert not read[0] & read[1] and read[0] | read[1] == set(range(5))
        counts = [len(list(source)) for source in ranks]
        assert counts[0] == counts[1] == len(ranks[0]) == 240 // 2 // 4 // 2


def test_the_stream_is_deterministic_given_seed_and_epoch(shards):
    first, second = stream(shards["dir"]), stream(shards["dir"])
    assert same_batches(list(first), list(second))
    second.set_epoch(2)
    assert not same_batches(list(first), list(second))
    assert not same_batches(list(first), list(stream(shards["dir"], seed=6)))


def loader_batches(source, workers):
    loader = torch.utils.data.DataLoader(source, batch_size=None, num_workers=workers)
    return list(loader)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_at_batch_k_gives_the_remaining_batches(shards, workers):
    source = stream(shards["dir"], workers=workers)
    source.set_epoch(3)
    full = loader_batches(source, workers)
    assert len(full) == 30
    source.set_epoch(3)
    source.start_at(7)
    assert len(source) == 23
    assert same_batches(loader_batches(source, workers), full[7:])


def test_persistent_workers_follow_set_epoch_and_start_at(shards):
    """The training loader keeps its shard workers across epochs: each epoch (and a resumed one) still gets the
    batches that a fresh stream of that epoch makes."""
    source = stream(shards["dir"], workers=2)
    loader = torch.utils.data.DataLoader(source, batch_size=None, num_workers=2, persistent_workers=True)
    expected = {}
    for epoch in (1, 2):
        fresh = stream(shards["dir"], workers=2)
        fresh.set_epoch(epoch)
        expected[epoch] = loader_batches(fresh, 2)
    for epoch in (1, 2):
        source.set_epoch(epoch)
        assert same_batches(list(loader), expected[epoch])
    source.set_epoch(2)
    source.start_at(5)
    assert same_batches(list(loader), expected[2][5:])
    assert not same_batches(expected[1], expected[2])


def test_a_process_checks_a_shards_checksum_on_its_first_pass_and_its_size_on_every_pass(shards, tmp_path):
    copy = copy_shards(shards, tmp_path)
    source = stream(copy)
    first = list(source)
    path = copy / "shard-000001.tar"
    data = bytearray(path.read_bytes())
    data[2000] ^= 0xFF          # same size, other bytes: caught by the next process to read it
    path.write_bytes(bytes(data))
    source.set_epoch(2)
    assert len(list(source)) == len(first)
    with pytest.raises(SpeakerNetError, match=r"shard-000001\.tar: SHA-256 differs"):
        list(stream(copy))
    path.write_bytes(bytes(data) + bytes(512))      # another size: caught on any pass
    source.set_epoch(3)
    with pytest.raises(SpeakerNetError, match=r"shard-000001\.tar: \d+ bytes, its manifest says"):
        list(source)


def test_too_few_speakers_for_a_batch_is_an_error(shards):
    with pytest.raises(SpeakerNetError, match="can never be filled"):
        stream(shards["dir"], batch_size=9, workers=5)      # 5 workers, one shard of 8 speakers each


@pytest.mark.slow
def test_training_from_shards(shards, tiny_corpus, tmp_path):
    save = tmp_path / "run"
    status = trainSpeakerNet.main([
        "--train_shards", str(shards["dir"] / "shard-{000000..000004}.tar"), "--test_list",
        tiny_corpus["test_list"], "--test_path", tiny_corpus["test_path"], "--model", "ResNetSE34L", "--trainfunc",
        "mp_balance", "--max_frames", "20", "--eval_frames", "20", "--batch_size", "4", "--max_epoch", "1",
        "--nDataLoaderThread", "1", "--save_path", str(save), "--device", "cpu", "--nOut", "64"])
    assert status == 0
    scores = (save / "result" / "scores.txt").read_text()
    assert "IT 1," in scores and "VEER" in scores
    assert (save / "model" / "model000000001.model").exists()
