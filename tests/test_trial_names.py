"""The published VoxCeleb1 trial lists are named (spknet.evaluation.trials.name_trial_list): synthetic lists of
the published lengths, in memory and as files, the WARNING on an original list, the name in ``--eval``'s report
and in training's INFO lines (scores.txt)."""

import logging

import numpy as np
import pytest
import soundfile as sf

from spknet.evaluation.trials import Trial, name_trial_list, read_plan
from tests.helpers import SUBPROCESS_ENV, run_cli

ONE_THREAD = {"OMP_NUM_THREADS": "1", **SUBPROCESS_ENV}
TEST_SPEAKERS = [f"id{number}" for number in range(10270, 10310)]           # VoxCeleb1's test split
ALL_SPEAKERS = [f"id{number}" for number in range(10001, 11252, 31)]        # spread over the whole of VoxCeleb1


def files_of(speakers, per_speaker=2):
    return [f"{speaker}/video{k}/0000{k}.wav" for speaker in speakers for k in range(per_speaker)]


def trials_over(files, count):
    """``count`` trials over ``files`` (several per pair), both kinds of label: trial ``i`` pairs file ``i mod n``
    with file ``7i + 1 mod n``, so the list repeats its first ``n`` trials, by reference (the published lists have
    up to half a million trials, too many to build one by one in a unit test)."""
    n = len(files)
    period = [Trial(int(files[i].split("/")[0] == files[(7 * i + 1) % n].split("/")[0]), files[i],
                    files[(7 * i + 1) % n]) for i in range(min(n, count))]
    return (period * (count // n + 1))[:count]


@pytest.mark.parametrize("count, speakers, expected", [
    (37_611, TEST_SPEAKERS, "Vox1-O (cleaned)"), (37_720, TEST_SPEAKERS, "Vox1-O (original)"),
    (579_818, ALL_SPEAKERS, "Vox1-E (cleaned)"), (581_480, ALL_SPEAKERS, "Vox1-E (original)"),
    (550_894, ALL_SPEAKERS, "Vox1-H (cleaned)"), (552_536, ALL_SPEAKERS, "Vox1-H (original)"),
])
def test_the_published_lists_are_named(count, speakers, expected):
    name, warning = name_trial_list(trials_over(files_of(speakers), count))
    assert name == expected
    if expected.endswith("(cleaned)"):
        assert warning is None
    else:
        cleaned = {"Vox1-O": "veri_test2.txt", "Vox1-E": "list_test_all2.txt", "Vox1-H": "list_test_hard2.txt"}
        assert cleaned[expected[:6]] in warning and "original" in warning


@pytest.mark.parametrize("count, files", [
    (37_612, files_of(TEST_SPEAKERS)),                          # one trial more than Vox1-O cleaned
    (37_611, files_of(TEST_SPEAKERS + ["id10001"])),            # a speaker outside VoxCeleb1's test split
    (37_611, [f"spk{i}/a.wav" for i in range(80)]),             # not VoxCeleb files at all
    (579_818, files_of(["id11252"] + TEST_SPEAKERS)),           # a speaker beyond VoxCeleb1
    (200, files_of(TEST_SPEAKERS)),
])
def test_other_lists_have_no_name(count, files):
    assert name_trial_list(trials_over(files, count)) == (None, None)


def test_kaldi_keys_are_recognised():
    keys = [f"{speaker}-video{k}-0000{k}" for speaker in TEST_SPEAKERS for k in range(2)]
    assert name_trial_list(trials_over(keys, 37_611)) == ("Vox1-O (cleaned)", None)


def write_vox1_test(root, count, seconds=1.0):
    """Wav files of the 40 VoxCeleb1 test speakers under ``root`` and a trial list of ``count`` lines."""
    files = files_of(TEST_SPEAKERS)
    rng = np.random.default_rng(0)
    for path in files:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / path, (rng.standard_normal(int(seconds * 16000)) * 3000).astype(np.int16), 16000)
    listing = root / "trials.txt"
    listing.write_text("".join(f"{t.label} {t.enroll} {t.test}\n" for t in trials_over(files, count)))
    return listing


def test_reading_an_original_list_warns_and_names_the_cleaned_one(tmp_path):
    listing = write_vox1_test(tmp_path, 37_720, seconds=0.1)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("speakernet")
    logger.addHandler(handler)
    try:
        plan = read_plan([str(listing)], str(tmp_path))
    finally:
        logger.removeHandler(handler)
    assert plan.tests[0].published == "Vox1-O (original)"
    assert plan.tests[0].describe() == f"{listing} (Vox1-O (original))"
    warnings = [record.getMessage() for record in records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(listing) in warnings[0] and "veri_test2.txt" in warnings[0]


@pytest.mark.slow
def test_eval_reports_the_list_name_and_warns_on_the_original(tmp_path, random_checkpoint):
    listing = write_vox1_test(tmp_path, 37_720)
    result = run_cli("--model", "ResNetSE34L", "--trainfunc", "mp_balance", "--nOut", "16", "--nSpeakers", "40",
                     "--eval", "--initial_model", random_checkpoint, "--test_list", listing,
                     "--test_path", tmp_path, "--save_path", tmp_path / "run", "--nDataLoaderThread", "0",
                     env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"== {listing}: 37720 trials (Vox1-O (original), crops scoring)" in result.stdout
    assert "WARNING:" in result.stderr and "veri_test2.txt" in result.stderr


@pytest.mark.slow
def test_training_info_lines_name_the_list(tmp_path, tiny_corpus):
    listing = write_vox1_test(tmp_path, 37_611)
    save_path = tmp_path / "run"
    result = run_cli("--model", "ResNetSE34L", "--trainfunc", "softmax", "--nOut", "16",
                     "--train_list", tiny_corpus["train_list"], "--train_path", tiny_corpus["train_path"],
                     "--test_list", listing, "--test_path", tmp_path, "--save_path", save_path,
                     "--max_frames", "20", "--eval_frames", "20", "--batch_size", "20", "--max_epoch", "1",
                     "--nDataLoaderThread", "0", env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (save_path / "result" / "scores.txt").read_text().splitlines()
    assert any(line.startswith("IT 1, LR ") for line in log)                   # the original's line unchanged
    info = [line for line in log if line.startswith("INFO epoch 1:")]
    assert len(info) == 1 and ", list Vox1-O (cleaned)" in info[0]
    assert "WARNING" not in result.stderr
