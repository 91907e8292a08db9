"""The VoxCeleb recipe (recipes/voxceleb/run.sh) and its helpers (spknet.recipe): the flags the stages derive, the
recipe's options refused before any stage runs, the calibration trials, the report, stage selection and skipping,
missing inputs, and (slow) stages 3-9 end to end on a tiny corpus in VoxCeleb's layout."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spknet import recipe
from spknet.cli import spec_from_argv
from spknet.data.synthetic import make_corpus
from spknet.errors import SpeakerNetError
from tests.helpers import REPO, SUBPROCESS_ENV, saved_run_checkpoint

RUN_SH = REPO / "recipes" / "voxceleb" / "run.sh"
TRAIN_CONFIGS = ["mp_balance", "mmp_balance2", "recipe_resnet34_aamsoftmax", "recipe_ecapa_tdnn_aamsoftmax",
                 "recipe_resnet34_mp_balance"]
LAYOUT = dict(speakers=12, utterances=4, test_speakers=4, test_utterances=4, trials=40, min_duration=1.0,
              max_duration=1.0, seed=3)


def run_recipe(*args, timeout=600):
    """``bash run.sh ARGS`` with this interpreter; the CompletedProcess (text)."""
    environment = {**os.environ, **SUBPROCESS_ENV, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(RUN_SH), *map(str, args)], capture_output=True, text=True, check=False,
                          timeout=timeout, env=environment)


def error_lines(completed) -> list[str]:
    return [line for line in completed.stderr.splitlines() if line.startswith("error:")]


# ----------------------------------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TRAIN_CONFIGS)
def test_lm_fine_tuning_keeps_the_trained_network(name):
    config = str(REPO / "configs" / f"{name}.yaml")
    flags = recipe.lm_flags(config)
    trained, tuned = spec_from_argv(["--config", config]), spec_from_argv(["--config", *flags[:1], *flags[1:]])
    expected = "lmft_aamsoftmax.yaml" if "aamsoftmax" in name else "lmft_mp_balance.yaml"
    assert os.path.basename(flags[0]) == expected
    assert tuned.model == trained.model
    assert tuned.data.speed_perturb == trained.data.speed_perturb
    assert tuned.training.max_epoch < trained.training.max_epoch
    if "aamsoftmax" in name:
        assert tuned.training.margin == 0.5 and tuned.training.scale == trained.training.scale


def test_a_loss_without_lm_config_is_an_error(tmp_path):
    config = tmp_path / "softmax.yaml"
    config.write_text("model: ResNetSE34L\ntrainfunc: softmax\n")
    with pytest.raises(SpeakerNetError, match="softmax.*--stop_stage 4"):
        recipe.lm_flags(str(config))
    assert os.path.basename(recipe.lm_flags(str(config), ["--trainfunc", "aamsoftmax"])[0]) == "lmft_aamsoftmax.yaml"


def test_evaluation_crop_and_flags(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("max_frames: 350\n")
    assert recipe.eval_flags(str(config), [])[0] == 350
    assert recipe.eval_flags(str(config), ["--max_frames", "50"])[0] == 50
    frames, flags = recipe.eval_flags(str(config), ["--max_epoch", "2", "--eval_frames=0", "--nDataLoaderThread",
                                                    "0", "--trust_checkpoint", "--eval_batch_size", "4"])
    assert frames == 0 and flags == ["--eval_frames", "0", "--nDataLoaderThread", "0", "--eval_batch_size", "4",
                                     "--trust_checkpoint"]
    assert "--eval_batch_size" not in recipe.eval_flags(str(config), ["--eval_batch_size", "4"], calibrate=True)[1]
    config.write_text("max_frames: 350\neval_frames: 400\nnDataLoaderThread: 2\n")
    assert recipe.eval_flags(str(config), ["--max_frames", "50"]) == (400, ["--eval_frames", "400"])
    assert recipe.crop_text(0) == "whole files" and "400 frames" in recipe.crop_text(400)
    # the trainer's own parser reads them: its errors, its aliases, its unknown flags
    with pytest.raises(SpeakerNetError, match="the flags after --: trainSpeakerNet.py: argument --eval_frames: "
                                              "invalid int value: 'x'"):
        recipe.eval_flags(str(config), ["--eval_frames", "x"])
    with pytest.raises(SpeakerNetError, match="unrecognized arguments: --crop 3"):
        recipe.eval_flags(str(config), ["--crop", "3"])
    config.write_text("nClasses: 7\neval_frame: 3\n")
    with pytest.raises(SpeakerNetError, match="unknown key 'eval_frame'"):
        recipe.eval_flags(str(config), [])


# ----------------------------------------------------------------------------------------------------------------
# Calibration trials
# ----------------------------------------------------------------------------------------------------------------

def test_calibration_trials_pair_training_speakers(tmp_path):
    listing = tmp_path / "train_list.txt"
    lines = [f"spk{s:02d} spk{s:02d}/v/{u}.wav" for s in range(30) for u in range(2 + s % 3)] + ["lone lone/v/0.wav"]
    listing.write_text("\n".join(lines) + "\n")
    trials = recipe.dev_trials(str(listing), speakers=10, trials=1001, seed=4)
    assert trials == recipe.dev_trials(str(listing), speakers=10, trials=1001, seed=4)
    labels = np.array([int(t.split()[0]) for t in trials])
    speakers = [(t.split()[1].split("/")[0], t.split()[2].split("/")[0]) for t in trials]
    assert len(trials) == 1001 and labels.sum() == 500
    assert all((a == b) == bool(label) for (a, b), label in zip(speakers, labels))
    assert all(t.split()[1] != t.split()[2] for t in trials)
    used = {name for pair in speakers for name in pair}
    assert len(used) == 10 and "lone" not in used


# ----------------------------------------------------------------------------------------------------------------
# The report and the driver
# ----------------------------------------------------------------------------------------------------------------

def fake_stage(exp: Path, folder: str, lists: list[str], scores: dict, frames: int = 0, calibrated: dict = None):
    """A stage's record as its --eval leaves it: result/metrics.json, the metrics of each list's (score, label)
    pairs; ``calibrated``: list stem -> (Cllr, actDCF(0.01))."""
    from spknet.evaluation.metrics import compute_metrics

    entries = []
    for path, (name, (values, labels)) in zip(lists, scores.items()):
        metrics = compute_metrics(values, labels)
        cllr, act = (calibrated or {}).get(name, (None, None))
        entries.append({"path": path, "name": name, "published": None, "trials": len(values), "eer": metrics.eer,
                        "eer_threshold": metrics.eer_threshold,
                        "min_dcf": {f"{p:g}": value for p, (value, _) in metrics.min_dcf.items()},
                        "min_cllr": 0.1, "cllr": cllr, "act_dcf": None if act is None else {"0.05": 0.5, "0.01": act}})
    recipe.write_json(str(exp / folder / "result" / "metrics.json"),
                      {"model": "m.model", "eval_frames": frames, "scoring": "cosine", "score_norm": "none",
                       "calibration": "c.json" if calibrated else None, "p_targets": [0.05, 0.01], "c_miss": 1.0,
                       "c_fa": 1.0, "lists": entries})


def test_calibrated_rows_take_cllr_and_act_dcf_from_the_evaluation_record(tmp_path):
    """A calibrated stage's Cllr and actDCF(0.01) are those its --eval wrote per list (a calibration with the
    durations needs the trials' audio to give LLRs, which --eval reads)."""
    separated = ([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0])
    for folder, cllr, act in (("calibrate", 0.4321, 0.9), ("calibrate_quality", 0.321, 0.8)):
        fake_stage(tmp_path, folder, ["/d/veri_test2.txt"], {"veri_test2": separated},
                   calibrated={"veri_test2": (cllr, act)})
    rows = [line for line in recipe.report(str(tmp_path)).splitlines() if line.startswith("| veri")]
    assert rows == ["| veri_test2.txt | calibrated | 4 | 0.0000 | 0.0000 | 0.4321 | 0.9000 | whole files |",
                    "| veri_test2.txt | calibrated + QMF | 4 | 0.0000 | 0.0000 | 0.3210 | 0.8000 | whole files |"]
    (tmp_path / "calibrate" / "result" / "metrics.json").write_text("{")
    with pytest.raises(SpeakerNetError, match="metrics.json: unreadable record .*run its stage again"):
        recipe.report(str(tmp_path))


def test_report_rows_from_the_evaluation_records(tmp_path):
    separated = ([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0])
    half = ([0.9, 0.1, 0.8, 0.2], [1, 1, 0, 0])
    fake_stage(tmp_path, "extract/plain", ["/d/veri_test2.txt", "/d/list_test_hard2.txt"],
               {"veri_test2": separated, "list_test_hard2": half}, frames=400)
    fake_stage(tmp_path, "score/asnorm", ["/d/veri_test2.txt"], {"veri_test2": half})
    text = recipe.report(str(tmp_path))
    rows = [line for line in text.splitlines() if line.startswith("| ") and "Stage" not in line]
    assert rows[0].startswith("| veri_test2.txt | plain | 4 | 0.0000 |") and "10 crops x 400 frames" in rows[0]
    assert rows[1].startswith("| veri_test2.txt | AS-norm | 4 | 50.0000 |") and "whole files" in rows[1]
    assert rows[2].startswith("| list_test_hard2.txt | plain | 4 | 50.0000 |")
    assert "commit:" in text and "torch" in text


def test_report_without_records_names_the_stage(tmp_path):
    with pytest.raises(SpeakerNetError, match="stage 6"):
        recipe.report(str(tmp_path))


# Stages 2, 3 and 6 stop at themselves: a range without stages 4, 5 and 8 runs no Python before the stage's input
# check (the options' check reads the config through trainSpeakerNet.py's parser, which imports torch); stage 1
# runs the whole range, the defaults passing that check.
@pytest.mark.parametrize("stage, stop, missing, maker", [
    (1, 9, "--voxceleb_url", ""), (2, 2, "data", "stage 1 (download)"), (3, 3, "train_list.txt", "stage 2 (prepare)"),
    (4, 9, "train/model", "stage 3 (train)"), (5, 9, "average.model", "stage 4 (average)"),
    (6, 6, "average.model", "stage 4 (average)"), (8, 9, "average.model", "stage 4 (average)"),
    (9, 9, "metrics.json", "stage 6 (extract)")])
def test_missing_inputs_name_the_stage_that_makes_them(tmp_path, stage, stop, missing, maker, monkeypatch):
    monkeypatch.delenv("VOXCELEB_URL", raising=False)
    monkeypatch.delenv("VOXCELEB_LIST", raising=False)
    data = tmp_path / "data"
    if stage != 2:
        data.mkdir()
    completed = run_recipe("--data", data, "--exp", tmp_path / "exp", "--stage", stage, "--stop_stage", stop)
    assert completed.returncode == 2, completed.stderr
    errors = error_lines(completed)
    assert len(errors) == 1 and missing in errors[0] and maker in errors[0] and f"stage {stage}" in errors[0]
    assert not list((tmp_path / "exp" / ".done").glob("stage_*"))


@pytest.mark.parametrize("options, named", [
    # averaging 10 epochs of a 2-epoch run: refused at once, not after the training (the issue's new user)
    ((), "--average 10: stage 4 (average) averages the last 10 epoch checkpoints, and stage 3 (train) saves 2 "
         "(--max_epoch 2, --test_interval 1); give --average 2 or fewer"),
    (("--average", 2), "--lm_average 3: stage 5 (lmft) averages the last 3 epoch checkpoints, and its fine-tuning "
                       "(lmft_mp_balance.yaml and the flags after --) saves 2"),
    (("--average", 2, "--lm_average", 2, "--calib_speakers", 1), "--calib_speakers 1"),
    (("--config", REPO / "configs" / "mp_balance.yaml", "--stop_stage", 5, "--average", 5, "--lm_average", 6, "--",
      "--max_epoch", 12, "--test_interval", 4, "--average_epochs", 3),
     "--lm_average 6: stage 5 (lmft) averages the last 6 epoch checkpoints, and its fine-tuning "
     "(lmft_mp_balance.yaml and the flags after --) saves 5 (--max_epoch 12, --test_interval 4, --average_epochs 3)"),
])
def test_options_that_cannot_work_are_refused_before_stage_3(tmp_path, options, named):
    """One ``error:`` line naming the recipe's option, before stage 3 starts: no data is needed to say it."""
    words = list(options)
    extra = words[words.index("--"):] if "--" in words else ["--", "--max_epoch", 2]
    own = words[:words.index("--")] if "--" in words else words
    completed = run_recipe("--data", tmp_path / "data", "--exp", tmp_path / "exp", "--stage", 3, *own, *extra)
    assert completed.returncode == 2 and len(error_lines(completed)) == 1, completed.stderr
    assert named in error_lines(completed)[0], completed.stderr
    assert "== stage" not in completed.stdout and not (tmp_path / "exp").exists()


@pytest.mark.parametrize("options, extra, named", [
    (("--average", 0), (), "--average 0: stage 4 (average) averages at least 1"),
    (("--calib_trials", 1), (), "--calib_trials 1"),
    ((), ("--max_epoch", "two"), "the flags after --: trainSpeakerNet.py: argument --max_epoch: invalid int value: "
                                 "'two'"),
])
def test_the_check_names_the_option_that_cannot_work(tmp_path, capsys, options, extra, named):
    """The check run.sh runs before stage 3 (``python -m spknet.recipe check``; the test above runs it through
    run.sh, which passes it the recipe's options), called as run.sh calls it: exit 2 and one ``error:`` line
    naming the option."""
    values = {"--average": 2, "--lm_average": 2, "--calib_speakers": 200, "--calib_trials": 20000,
              **dict(zip(options[::2], options[1::2]))}
    argv = ["check", "--config", str(REPO / "configs" / "mp_balance.yaml"), "--exp", str(tmp_path / "exp"),
            "--first", "3", "--last", "9", *[str(word) for pair in values.items() for word in pair], "--",
            *(extra or ("--max_epoch", "2"))]
    assert recipe.main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and named in errors[0], errors
    assert not (tmp_path / "exp").exists()


def test_options_that_fit_pass_the_check(tmp_path):
    """The same run with averages that fit goes on to stage 3 (and stops there: no data)."""
    completed = run_recipe("--data", tmp_path / "data", "--exp", tmp_path / "exp", "--stage", 3, "--average", 2,
                           "--lm_average", 2, "--", "--max_epoch", 2)
    assert completed.returncode == 2 and "stage 3 (train) needs" in error_lines(completed)[0]


def test_stages_are_selected_and_done_ones_skipped(tmp_path):
    exp = tmp_path / "exp"
    (tmp_path / "data").mkdir()
    fake_stage(exp, "extract/plain", ["/d/veri_test2.txt"], {"veri_test2": ([0.9, 0.1], [1, 0])})
    args = ("--data", tmp_path / "data", "--exp", exp)
    nothing = run_recipe(*args, "--stage", 4, "--stop_stage", 3)
    assert nothing.returncode == 0 and not (exp / "results.md").exists()
    only_8 = run_recipe(*args, "--stage", 8, "--stop_stage", 8)     # stage 8 runs (its check fails), not 9
    assert only_8.returncode == 2 and "stage 8" in error_lines(only_8)[0] and not (exp / "results.md").exists()
    report = run_recipe(*args, "--stage", 9, "--stop_stage", 20)     # past the last stage: to the end
    assert report.returncode == 0, report.stderr
    assert "| veri_test2.txt | plain | 2 | 0.0000 |" in (exp / "results.md").read_text()
    assert (exp / ".done" / "stage_9").exists() and (exp / "logs" / "stage_9.log").exists()
    (exp / "results.md").unlink()
    again = run_recipe(*args, "--stage", 9)
    assert again.returncode == 0 and "stage 9 (report): done" in again.stdout and "skipped" in again.stdout
    assert not (exp / "results.md").exists()


def test_a_stage_that_runs_clears_the_later_stages_markers(tmp_path):
    exp = tmp_path / "exp"
    (tmp_path / "data").mkdir()
    argv = ["--model", "ResNetSE34L", "--nOut", "8", "--trainfunc", "softmax", "--nSpeakers", "4"]
    (exp / "train" / "model").mkdir(parents=True)
    saved_run_checkpoint(argv, exp / "train" / "model" / "model000000001.model")
    (exp / ".done").mkdir()
    for stage in (2, 6, 9):
        (exp / ".done" / f"stage_{stage}").write_text("earlier\n")
    args = ("--data", tmp_path / "data", "--exp", exp, "--stage", 4, "--stop_stage", 4)
    too_many = run_recipe(*args, "--average", 2)        # stage 3 does not run: its folder's checkpoints count
    assert too_many.returncode == 2 and error_lines(too_many) == [
        f"error: --average 2: stage 4 (average) averages the last 2 epoch checkpoints, and {exp / 'train' / 'model'} "
        f"holds 1; give --average 1 or fewer, or train more epochs"]
    assert "== stage" not in too_many.stdout
    completed = run_recipe(*args, "--average", 1)
    assert completed.returncode == 0, completed.stderr
    assert (exp / "average.model").is_file()
    assert sorted(path.name for path in (exp / ".done").iterdir()) == ["stage_2", "stage_4"]


def test_voxceleb_layout(tmp_path):
    plain = make_corpus(str(tmp_path / "plain"), **LAYOUT)
    layout = make_corpus(str(tmp_path / "vox"), voxceleb_layout=True, **LAYOUT)
    root = Path(layout["save_path"])
    assert layout["train_path"] == str(root / "voxceleb2") and layout["test_path"] == str(root / "voxceleb1")
    assert [os.path.basename(p) for p in layout["test_lists"]] == ["veri_test2.txt", "list_test_all2.txt"]
    assert (root / "veri_test2.txt").read_text() == Path(plain["test_list"]).read_text()
    assert (root / "list_test_all2.txt").read_text() != (root / "veri_test2.txt").read_text()
    assert (root / "train_list.txt").read_text() == Path(plain["train_list"]).read_text()
    train_speakers = {line.split()[0] for line in (root / "train_list.txt").read_text().splitlines()}
    for name in ("veri_test2.txt", "list_test_all2.txt"):
        for line in (root / name).read_text().splitlines():
            _, enroll, test = line.split()
            assert (root / "voxceleb1" / enroll).is_file() and (root / "voxceleb1" / test).is_file()
            assert enroll.split("/")[0] not in train_speakers
    assert all((root / "voxceleb2" / line.split()[1]).is_file()
               for line in (root / "train_list.txt").read_text().splitlines())


# ----------------------------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_stages_3_to_9_on_a_tiny_corpus(tmp_path):
    make_corpus(str(tmp_path / "data"), voxceleb_layout=True, **LAYOUT)
    exp = tmp_path / "exp"
    args = ("--data", tmp_path / "data", "--exp", exp, "--stage", 3, "--average", 2, "--lm_average", 2,
            "--calib_speakers", 12, "--calib_trials", 100, "--identify", "--", "--max_epoch", 2, "--batch_size", 6,
            "--max_frames", 50, "--nDataLoaderThread", 0, "--eval_frames", 0, "--nOut", 16)
    completed = run_recipe(*args)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    text = (exp / "results.md").read_text()
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ") and "Stage" not in line]
    cells = [[cell.strip() for cell in row] for row in rows]
    assert [(c[0], c[1]) for c in cells] == [(name, stage) for name in ("veri_test2.txt", "list_test_all2.txt")
                                            for stage in ("plain", "LM", "AS-norm", "calibrated", "calibrated + QMF")]
    for c in cells:
        assert c[2] == "40" and 0 <= float(c[3]) <= 100 and 0 <= float(c[4]) and c[7] == "whole files"
        assert (c[5] == "-") == (c[6] == "-") == (not c[1].startswith("calibrated"))
    assert float(cells[3][5]) > 0 and float(cells[4][5]) > 0 and float(cells[4][6]) >= 0
    assert (exp / "calibrate" / "quality.calibration.json").is_file()
    assert "lmft_mp_balance.yaml" in text and "--max_epoch 2" in text and "machine: CPU" in text
    assert (exp / "calibrate" / "final.calibration.json").is_file()
    assert (exp / "extract" / "lm" / "embeddings.npz").is_file()
    # stage 10: 2 of the 4 test speakers enrolled on their first session, the other 2 impostors
    assert "closed-set top-1" in (exp / "identify" / "result.txt").read_text()
    assert "2 speakers enrolled" in (exp / "logs" / "stage_10.log").read_text()
    again = run_recipe(*args)
    assert again.returncode == 0 and again.stdout.count("skipped") == 8
