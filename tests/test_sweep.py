"""scripts/sweep_losses.sh end to end on a tiny synthetic corpus, and its log parser (scripts/summarise_runs.py)."""

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow      # subprocess runs of the command line (seconds each)

SCRIPT = REPO / "scripts" / "sweep_losses.sh"


def _load_summariser():
    spec = importlib.util.spec_from_file_location("summarise_runs", REPO / "scripts" / "summarise_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


summarise = _load_summariser()

ARGS_HEADER = "max_frames 200\nbatch_size 32\ntrainfunc mp_balance\nsave_path exps/sweep/mp_balance\n"
SCORES = ARGS_HEADER + """\
IT 1, LR 0.001000, TEER/T1 12.50, TLOSS 5.250000, VEER 31.2500
INFO epoch 1: EER 31.2500, minDCF(p=0.05) 0.9100, minDCF(p=0.01) 0.9900, train 10.2 s
IT 2, LR 0.001000, TEER/T1 20.00, TLOSS 4.100000, VEER 22.5000
INFO epoch 2: EER 22.5000, minDCF(p=0.05) 0.8000, minDCF(p=0.01) 0.9500, train 9.8 s
IT 3, LR 0.001000, TEER/T1 25.00, TLOSS 3.900000, VEER 22.5000
INFO epoch 3: EER 22.5000, minDCF(p=0.05) 0.7900, minDCF(p=0.01) 0.9400, train 9.9 s
"""
# resumed later with a larger --max_epoch: the log is appended, argument lines again; epoch 4 without evaluation
RESUMED = SCORES + ARGS_HEADER + """\
IT 4, LR 0.000700, TEER 30.00, TLOSS 3.500000
INFO epoch 4: train 9.7 s
IT 5, LR 0.000700, TEER 33.00, TLOSS 3.200000, VEER 25.0000
INFO epoch 5: EER 25.0000, minDCF(p=0.05) 0.8500, minDCF(p=0.01) 0.9700, train 9.9 s
"""


def write_run(root, name, scores=None, exit_code=None, wall=None):
    run = root / name
    run.mkdir(parents=True)
    if scores is not None:
        (run / "result").mkdir()
        (run / "result" / "scores.txt").write_text(scores)
    if exit_code is not None:
        (run / "exit_code.txt").write_text(f"{exit_code}\n")
    if wall is not None:
        (run / "wall_seconds.txt").write_text(f"{wall}\n")
    return run


def table_rows(text):
    """Table lines (after the header and the dashes) split on runs of 2+ spaces: {loss: cells}."""
    lines = text.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("loss ")) + 2
    rows = {}
    for line in lines[start:]:
        cells = [cell for cell in line.split("  ") if cell.strip()]
        rows[cells[0].strip()] = [cell.strip() for cell in cells]
    return lines[start - 2], rows


# ---- the parser ----------------------------------------------------------------------------------------------

def test_parse_scores_epochs_and_dcf():
    epochs = summarise.parse_scores(SCORES)
    assert sorted(epochs) == [1, 2, 3]
    assert epochs[2].veer == 22.5 and epochs[2].train_accuracy == 20.0 and epochs[2].train_loss == 4.1
    assert epochs[2].min_dcf == {"0.05": 0.8, "0.01": 0.95}


def test_summary_final_best_and_resumed_log(tmp_path):
    run = summarise.summarise_run(write_run(tmp_path, "mp_balance", SCORES, 0, 31.04))
    assert run.status == "ok" and run.last_epoch == 3 and run.wall_seconds == 31.04
    assert run.final.epoch == 3 and run.final.veer == 22.5 and run.final.min_dcf["0.05"] == 0.79
    assert run.best.epoch == 2                    # ties go to the earliest epoch

    resumed = summarise.summarise_run(write_run(tmp_path, "resumed", RESUMED, 0, 50))
    assert resumed.last_epoch == 5 and resumed.final.epoch == 5 and resumed.final.veer == 25.0
    assert resumed.epochs[4].veer is None and resumed.epochs[4].lr == 0.0007
    assert resumed.best.epoch == 2


def test_summary_failed_empty_missing_and_nan(tmp_path):
    partial = SCORES.split("IT 2,")[0]
    failed = summarise.summarise_run(write_run(tmp_path, "triplet", partial, 1, 12.0))
    assert failed.failed and failed.status == "failed (exit 1)"
    assert failed.final.epoch == 1 and failed.best.epoch == 1      # what it logged before failing still shows

    crashed = summarise.summarise_run(write_run(tmp_path, "ge2e", None, 137, 3.5))
    assert crashed.failed and crashed.final is None and crashed.last_epoch is None

    empty = summarise.summarise_run(write_run(tmp_path, "proto", ARGS_HEADER, 0, "garbage"))
    assert empty.status == "no scores" and not empty.failed and empty.wall_seconds is None

    missing = summarise.summarise_run(str(tmp_path / "absent"))
    assert missing.status == "not run" and missing.name == "absent"

    nan = ("IT 1, LR 0.001000, TEER/T1 0.00, TLOSS nan, VEER nan\n"
           "IT 2, LR 0.001000, TEER/T1 1.00, TLOSS 2.0, VEER 40.0\n")
    diverged = summarise.summarise_run(write_run(tmp_path, "softmax", nan, 0, 1))
    assert diverged.best.epoch == 2 and diverged.status == "ok"


def test_best_epoch_follows_the_validation_list(tmp_path):
    """With --val_list the INFO lines carry ``val EER``: the best epoch is the one trainSpeakerNet.py chose by it,
    not the one with the lowest test EER."""
    text = "".join(f"IT {e}, LR 0.001000, TEER/T1 10.00, TLOSS 3.0, VEER {test:.4f}\n"
                   f"INFO epoch {e}: EER {test:.4f}, minDCF(p=0.05) 0.9, val EER {val:.4f}, train 1.0 s\n"
                   for e, test, val in [(1, 30.0, 35.0), (2, 20.0, 33.0), (3, 25.0, 31.0)])
    run = summarise.summarise_run(write_run(tmp_path, "mp", text, 0, 1))
    assert [run.epochs[e].val_eer for e in (1, 2, 3)] == [35.0, 33.0, 31.0]
    assert run.best.epoch == 3 and run.final.epoch == 3
    without_val = summarise.summarise_run(write_run(tmp_path, "mmp", text.replace(", val EER", ", other"), 0, 1))
    assert without_val.best.epoch == 2


def test_table_and_main(tmp_path, capsys):
    write_run(tmp_path, "mp_balance", SCORES, 0, 31.04)
    write_run(tmp_path, "triplet", None, 1, 2.25)
    write_run(tmp_path, "proto", ARGS_HEADER, 0, 4)
    assert summarise.main([str(tmp_path), "mp_balance", "triplet", "proto", "softmax"]) == 0
    header, rows = table_rows(capsys.readouterr().out)
    assert header.split() == ["loss", "status", "epochs", "final", "VEER", "minDCF(p=0.05)", "best", "epoch",
                              "best", "VEER", "wall", "s"]
    assert rows["mp_balance"] == ["mp_balance", "ok", "3", "22.5000", "0.7900", "2", "22.5000", "31.0"]
    assert rows["triplet"] == ["triplet", "failed (exit 1)", "-", "-", "-", "-", "-", "2.2"]
    assert rows["proto"][1] == "no scores" and rows["softmax"][1:] == ["not run"] + ["-"] * 6
    assert summarise.main([str(tmp_path), "--check"]) == 1          # every sub-folder; triplet failed
    assert list(table_rows(capsys.readouterr().out)[1]) == ["mp_balance", "proto", "triplet"]


def test_a_run_with_a_final_average_gets_its_column(tmp_path, capsys):
    averaged = SCORES + ("INFO average of epochs 2-3 (exps/x/model/average_last2.model): EER 21.2500, "
                         "minDCF(p=0.05) 0.7700, minDCF(p=0.01) 0.9300, eval 1.0 s\n")
    longer = averaged + RESUMED[len(SCORES):] + ("INFO average of epochs 4-5 (exps/x/model/average_last2.model): "
                                                  "EER 24.0000, minDCF(p=0.05) 0.8300, eval 1.0 s\n")
    several = SCORES + "INFO average of epochs 2-3 (p): veri_test EER 20.5000, minDCF(p=0.05) 0.7, eval 1.0 s\n"
    for name, scores in (("averaged", averaged), ("longer", longer), ("several", several), ("plain", SCORES)):
        write_run(tmp_path, name, scores, 0, 1)
    assert summarise.main([str(tmp_path)]) == 0
    header, rows = table_rows(capsys.readouterr().out)
    assert header.split()[-4:] == ["average", "VEER", "wall", "s"]
    assert rows["averaged"][-2:] == ["21.2500", "1.0"] and rows["longer"][-2:] == ["24.0000", "1.0"]
    assert rows["several"][-2] == "20.5000" and rows["plain"][-2] == "-"
    # the IT lines are read as before: the average is not an epoch
    assert rows["averaged"][2:7] == ["3", "22.5000", "0.7900", "2", "22.5000"]


# ---- the script ----------------------------------------------------------------------------------------------

def run_sweep(*args, env=None, timeout=120):
    environment = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=environment, check=False)


def test_sweep_rejects_bad_arguments(tmp_path):
    for args, env, message in [((), {}, "CORPUS_DIR"),
                               ((tmp_path,), {}, "train_list.txt not found"),
                               ((tmp_path, "0"), {}, "EPOCHS must be a positive integer")]:
        result = run_sweep(*args, env=env)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    for name in ("train_list.txt", "veri_test.txt"):
        (tmp_path / name).write_text("")
    (tmp_path / "wav").mkdir()
    result = run_sweep(tmp_path, "1", env={"LOSSES": "mp_balance nosuchloss", "SWEEP_DIR": str(tmp_path / "s")})
    assert result.returncode == 2 and "unknown loss 'nosuchloss'" in result.stderr
    assert not (tmp_path / "s" / "mp_balance").exists()         # checked before anything trains


def test_sweep_end_to_end(tmp_path):
    from spknet.data.synthetic import make_corpus

    corpus = tmp_path / "corpus"
    make_corpus(str(corpus), speakers=12, utterances=4, test_speakers=4, test_utterances=4, trials=40,
                min_duration=1.2, max_duration=1.2, seed=3)
    sweep = tmp_path / "sweep"
    (sweep / "triplet").mkdir(parents=True)
    (sweep / "triplet" / "result").write_text("a file where the run wants its result folder: this run fails")
    result = run_sweep(corpus, "1", env={"LOSSES": "mp_balance triplet softmax", "SWEEP_DIR": str(sweep),
                                         "BATCH_SIZE": "4", "MAX_FRAMES": "50", "LOADER_THREADS": "0"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 of 3 run(s) failed: triplet" in result.stderr

    header, rows = table_rows(result.stdout)
    assert "minDCF(p=0.05)" in header and list(rows) == ["mp_balance", "triplet", "softmax"]
    for loss in ("mp_balance", "softmax"):
        _, status, epochs, veer, dcf, best_epoch, best_veer, wall = rows[loss]
        assert status == "ok" and epochs == "1" and best_epoch == "1", rows[loss]
        run = sweep / loss
        # the table's numbers are the ones the run wrote (and printed to its log)
        scores = (run / "result" / "scores.txt").read_text()
        logged_veer = re.search(r"^IT 1, .*, VEER (\S+)$", scores, re.MULTILINE).group(1)
        info = re.search(r"^INFO epoch 1: EER (\S+), minDCF\(p=0\.05\) (\S+),", scores, re.MULTILINE)
        assert veer == best_veer == logged_veer == info.group(1), (rows[loss], scores)
        assert dcf == f"{float(info.group(2)):.4f}", (rows[loss], scores)
        assert info.group(0) in (run / "train.log").read_text()
        assert float(wall) == float((run / "wall_seconds.txt").read_text()) > 0
        assert (run / "exit_code.txt").read_text().strip() == "0"
        assert (run / "model" / "model000000001.model").exists()
        command = (run / "command.txt").read_text()
        assert f"--trainfunc {loss}" in command and "--save_path " + str(run) in command
    # a file where the run's result/ folder goes: the run is not started, one line names the path, exit code 2
    blocked = sweep / "triplet" / "result"
    message = f"sweep_losses.sh: {blocked} exists and is not a folder; the triplet run needs a folder there"
    assert rows["triplet"][1:] == ["failed (exit 2)"] + ["-"] * 6
    assert (sweep / "triplet" / "train.log").read_text() == message + "\n"
    assert f"    {message}\n" in result.stderr and "Traceback" not in result.stderr
    assert not (sweep / "triplet" / "model").exists()
    assert (sweep / "summary.txt").read_text() == result.stdout
