"""Score calibration: the fit, the file, the refusals, and the commands that make and use it."""

import hashlib
import json
import os
import re

import numpy as np
import pytest
import torch

import inference
import SpeakerNet
import trainSpeakerNet
from spknet import calibration as calibrations
from spknet.calibration import Calibration, calibrate, fit_affine, scoring_options, weights_sha256
from spknet.errors import SpeakerNetError
from spknet.evaluation import cllr, min_cllr

NOUT = 16


def gaussian_scores(rng, targets: int, non_targets: int):
    """Equal-variance Gaussian scores, targets N(2, 1) and non-targets N(0, 1): their true LLR is 2 s - 2."""
    scores = np.concatenate([rng.normal(2.0, 1.0, targets), rng.normal(0.0, 1.0, non_targets)])
    return scores, np.concatenate([np.ones(targets, dtype=int), np.zeros(non_targets, dtype=int)])


@pytest.mark.parametrize("targets,non_targets", [(5000, 5000), (2000, 20000)])
def test_the_fit_recovers_a_known_scale_and_offset_whatever_the_target_proportion(targets, non_targets):
    scores, labels = gaussian_scores(np.random.default_rng(0), targets, non_targets)
    raw = 0.25 * scores - 3.0              # the scorer's scale: s = 4 (raw + 3), so llr = 8 raw + 22
    scale, offset = fit_affine(raw, labels)
    assert scale == pytest.approx(8.0, rel=0.06) and offset == pytest.approx(22.0, rel=0.06)
    # the LLR, not the posterior at the list's prior: its threshold of equal odds sits where the densities cross
    assert -offset / scale == pytest.approx(-2.75, abs=0.03)


def test_calibration_repairs_a_badly_scaled_scorer():
    scores, labels = gaussian_scores(np.random.default_rng(1), 1000, 9000)
    raw = 10.0 * scores + 5.0              # overconfident and shifted: read as LLRs, far worse than 1 bit
    options = scoring_options(0, "crops", "none", True, "int16", "zero")
    fitted = calibrate(raw, labels, "0" * 64, options, __file__)
    before, after = cllr(raw, labels), cllr(fitted.llr(raw), labels)
    best = min_cllr(raw, labels)
    assert before > 2.0 and after < before
    assert best <= after <= best + 0.02    # an affine map is all that Gaussian scores of equal variance need
    assert fitted.metrics["before"]["cllr"] == pytest.approx(before)
    assert fitted.metrics["after"]["cllr"] == pytest.approx(after)
    assert fitted.metrics["after"]["act_dcf"]["0.05"] < fitted.metrics["before"]["act_dcf"]["0.05"]


def test_a_list_the_scores_separate_still_gives_a_finite_calibration():
    scale, offset = fit_affine(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]))
    assert np.isfinite(scale) and scale > 0 and np.isfinite(offset)


# ---- the file ------------------------------------------------------------------------------------------------

@pytest.fixture
def fitted(tmp_path):
    scores, labels = gaussian_scores(np.random.default_rng(2), 300, 700)
    trials = tmp_path / "dev.txt"
    trials.write_text("1 a.wav b.wav\n")
    return calibrate(scores, labels, "ab" * 32, scoring_options(0, "crops", "none", True, "int16", "zero"),
                     str(trials), model=str(tmp_path / "m.model"))


def test_the_file_round_trip(fitted, tmp_path):
    path = tmp_path / "m.model.calibration.json"
    fitted.save(str(path))
    saved = json.loads(path.read_text())
    assert saved["format"] == "speakernet-calibration" and saved["version"] == 1
    assert saved["trials"] == {"target": 300, "non_target": 700}
    assert saved["trial_list"]["sha256"] == hashlib.sha256((tmp_path / "dev.txt").read_bytes()).hexdigest()
    assert saved["scoring"] == {"eval_frames": 0, "scoring": "crops", "score_norm": "none", "test_normalize": True,
                                "audio_scale": "int16", "pad": "zero", "short_files": "pad"}
    loaded = Calibration.load(str(path))
    assert loaded.source == str(path) and loaded.to_json() == fitted.to_json()
    assert loaded.llr(0.5) == pytest.approx(fitted.scale * 0.5 + fitted.offset)
    assert set(os.listdir(tmp_path)) == {"dev.txt", "m.model.calibration.json"}       # no temporary left behind
    assert calibrations.resolve(str(tmp_path / "m.model"), None).to_json() == fitted.to_json()   # beside M
    assert calibrations.resolve(str(tmp_path / "other.model"), None) is None


@pytest.mark.parametrize("damage,message", [
    (lambda text: text[: len(text) // 2], "not a readable calibration file"),
    (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "scale"}), "misses field.*scale"),
    (lambda text: json.dumps({**json.loads(text), "offset": "x"}), "'offset' should be a finite number"),
    (lambda text: json.dumps({**json.loads(text), "format": "other"}), "not a SpeakerNet calibration file"),
])
def test_a_damaged_file_is_an_error_naming_it(fitted, tmp_path, damage, message):
    path = tmp_path / "c.json"
    fitted.save(str(path))
    path.write_text(damage(path.read_text()))
    with pytest.raises(SpeakerNetError, match=rf"{re.escape(str(path))}: .*{message}"):
        Calibration.load(str(path))
    with pytest.raises(SpeakerNetError, match=rf"{re.escape(str(tmp_path / 'none.json'))}: calibration file not"):
        Calibration.load(str(tmp_path / "none.json"))


def test_decisions_at_the_operating_point(tmp_path):
    identity = Calibration(1.0, 0.0, "", {}, {}, {})
    at = identity.decide(np.log(19), p_target=0.05)                  # exactly at -logit(0.05): not above, rejected
    assert (at.decision, at.threshold) == ("reject", pytest.approx(np.log(19)))
    assert identity.decide(3.0).decision == "accept" and identity.decide(3.0, p_target=0.01).decision == "reject"
    assert Calibration(2.0, -1.5, "", {}, {}, {}).formula() == "llr = 2 * score - 1.5"
    shifted = Calibration(2.0, -1.0, "", {}, {}, {}).decide(0.5, p_target=0.5)
    assert (shifted.score, shifted.llr, shifted.decision) == (0.5, 0.0, "reject")
    # the AS-norm cohort counts only with AS-norm
    assert "cohort_size" not in scoring_options(0, "cosine", "none", True, "float", "wrap", cohort_size=100)
    cohort = tmp_path / "cohort.txt"
    cohort.write_text("id1 a.wav\nid2 b.wav\n")
    options = scoring_options(0, "cosine", "asnorm", True, "float", "wrap", cohort_size=100, cohort_utterances=3,
                              cohort_list=str(cohort))
    assert options["cohort_size"] == 100
    assert options["cohort_list_sha256"] == hashlib.sha256(cohort.read_bytes()).hexdigest()


# ---- checkpoints ---------------------------------------------------------------------------------------------

def random_checkpoint(path, seed: int):
    """A small random ResNetSE34L as the original saves it (a flat state dict)."""
    torch.manual_seed(seed)
    torch.save(SpeakerNet.SpeakerNet.build("ResNetSE34L", "mp_balance", nOut=NOUT, nSpeakers=40).state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return random_checkpoint(folder / "a.model", 1), random_checkpoint(folder / "b.model", 2)


def test_the_weights_hash_follows_the_weights_not_the_file(checkpoints, tmp_path):
    first, second = (SpeakerNet.load_embedder(path, device="cpu", calibration=None) for path in checkpoints)
    assert first.weights_sha256() != second.weights_sha256()
    # the same weights in voxceleb_trainer's layout ({"model_state_dict": ...}, module.-prefixed) hash the same
    state = torch.load(checkpoints[0], weights_only=True)
    wrapped = tmp_path / "wrapped.model"
    torch.save({"model_state_dict": {f"module.{key}": value for key, value in state.items()}}, wrapped)
    assert SpeakerNet.load_embedder(str(wrapped), device="cpu").weights_sha256() == first.weights_sha256()
    assert weights_sha256(first.network) == first.weights_sha256()


def test_a_calibration_of_another_checkpoint_or_scoring_is_refused(checkpoints, tmp_path):
    first = SpeakerNet.load_embedder(checkpoints[0], device="cpu", calibration=None)
    made = Calibration(2.0, -1.0, first.weights_sha256(), first.scoring_options(),
                       {"path": "dev.txt", "sha256": ""}, {"target": 1, "non_target": 1})
    path = tmp_path / "a.calibration.json"
    made.save(str(path))
    assert SpeakerNet.load_embedder(checkpoints[0], device="cpu", calibration=str(path)).calibration.scale == 2.0
    with pytest.raises(SpeakerNetError, match=rf"{re.escape(str(path))}: calibration made for other model weights"):
        SpeakerNet.load_embedder(checkpoints[1], device="cpu", calibration=str(path))
    with pytest.raises(SpeakerNetError, match=rf"{re.escape(str(path))}: calibration made for other scoring options "
                                              r"\(eval_frames: calibrated with 0, now 300"):
        SpeakerNet.load_embedder(checkpoints[0], device="cpu", eval_frames=300, calibration=str(path))


def test_verify_gives_score_llr_and_decision(checkpoints, tmp_path):
    first = SpeakerNet.load_embedder(checkpoints[0], device="cpu", calibration=None)
    made = Calibration(40.0, 5.0, first.weights_sha256(), first.scoring_options(), {}, {})
    first.use_calibration(made)
    rng = np.random.default_rng(0)
    a, b = (rng.normal(0, 0.1, 6000).astype(np.float32) for _ in range(2))
    result = first.verify(a, b, p_target=0.01)
    assert result.score == pytest.approx(first.score(a, b), abs=1e-6)
    assert result.llr == pytest.approx(40.0 * result.score + 5.0, abs=1e-4)
    assert result.accept == (result.llr > np.log(99)) and result.threshold == pytest.approx(np.log(99))


def test_calibrate_needs_a_labelled_list_with_both_classes(checkpoints, tmp_path, capsys):
    import soundfile as sf
    for name in ("a", "b"):
        sf.write(tmp_path / f"{name}.wav", np.random.default_rng(0).normal(0, 0.1, 8000), 16000)
    for lines, message in (("a.wav b.wav\n", "calibration needs a labelled trial list"),
                           ("1 a.wav b.wav\n1 b.wav a.wav\n", "every trial has label 1")):
        trials = tmp_path / "trials.txt"
        trials.write_text(lines)
        code = inference.main(["calibrate", "--initial_model", checkpoints[0], "--test_list", str(trials),
                               "--test_path", str(tmp_path), "--device", "cpu"])
        assert code == 2 and f"error: {trials}: {message}" in capsys.readouterr().err
    assert not os.path.exists(checkpoints[0] + ".calibration.json")


@pytest.mark.parametrize("flag,value,minimum", [("--cohort_size", "1", 2), ("--cohort_utterances", "0", 1)])
def test_calibrate_refuses_a_cohort_too_small_for_as_norm(tmp_path, capsys, flag, value, minimum):
    with pytest.raises(SystemExit) as stop:
        inference.main(["calibrate", "--initial_model", str(tmp_path / "m.model"), "--test_list",
                        str(tmp_path / "trials.txt"), "--score_norm", "asnorm", flag, value])
    assert stop.value.code == 2
    assert f"argument {flag}: must be at least {minimum}, got {value}" in capsys.readouterr().err


def test_verify_without_a_calibration_says_how_to_make_one(checkpoints):
    embedder = SpeakerNet.load_embedder(checkpoints[1], device="cpu")         # nothing beside it: none
    assert embedder.calibration is None
    with pytest.raises(SpeakerNetError, match=r"verify needs a calibration.*python inference.py calibrate "
                                              r"--initial_model .*b.model"):
        embedder.verify(np.ones(8000, dtype=np.float32), np.ones(8000, dtype=np.float32))


# ---- the commands --------------------------------------------------------------------------------------------

def eval_command(model, trials, corpus, save_path, *extra):
    return ["--model", "ResNetSE34L", "--trainfunc", "mp_balance", "--nOut", str(NOUT), "--eval_frames", "0",
            "--eval", "--initial_model", model, "--test_list", str(trials), "--test_path", corpus["test_path"],
            "--save_path", str(save_path), "--nDataLoaderThread", "0", *extra]


@pytest.mark.slow
def test_calibrate_then_verify_then_eval(tiny_corpus, tmp_path, capsys):
    model = random_checkpoint(tmp_path / "m.model", 3)
    lines = open(tiny_corpus["test_list"]).read().splitlines()
    dev, test = tmp_path / "dev.txt", tmp_path / "test.txt"
    dev.write_text("\n".join(lines[:120]) + "\n")
    test.write_text("\n".join(lines[120:]) + "\n")
    root = tiny_corpus["test_path"]
    assert inference.main(["calibrate", "--initial_model", model, "--test_list", str(dev), "--test_path", root,
                           "--device", "cpu", "--nDataLoaderThread", "0"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"before \(raw scores as LLRs\): Cllr \d+\.\d{4}, minCllr \d\.\d{4}, actDCF\(p=0.05\) ", out)
    assert re.search(r"after \(llr = \S+ \* score [+-] \S+\): Cllr \d\.\d{4}, minCllr", out)
    saved = Calibration.load(model + ".calibration.json")
    dev_labels = [int(line.split()[0]) for line in lines[:120]]
    assert saved.trials == {"target": sum(dev_labels), "non_target": 120 - sum(dev_labels)}
    assert saved.metrics["after"]["cllr"] <= saved.metrics["before"]["cllr"]

    enroll, other = (os.path.join(root, path) for path in lines[0].split()[1:])
    assert inference.main(["verify", "--initial_model", model, enroll, other, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.splitlines()
    score, llr = float(printed[0].split()[1]), float(printed[1].split()[1])
    assert printed[0].startswith("score ") and llr == pytest.approx(saved.scale * score + saved.offset,
                                                           abs=abs(saved.scale) * 1e-6 + 1e-5)   # score: 6 decimals
    decision = "accept" if llr > np.log(19) else "reject"
    assert printed[2].startswith(f"{decision} (p_target 0.05: accept when llr > 2.9444")
    assert inference.main(["verify", "--initial_model", model, enroll, other, "--device", "cpu",
                           "--p_target", "0.999"]) == 0
    assert capsys.readouterr().out.splitlines()[2].startswith("accept" if llr > np.log(1 / 999) else "reject")
    # other scoring options than the calibration's are refused; --calibration none scores alone
    assert inference.main(["verify", "--initial_model", model, enroll, other, "--device", "cpu", "--scoring",
                           "cosine"]) == 2
    assert "calibration made for other scoring options" in capsys.readouterr().err
    assert inference.main(["verify", "--initial_model", model, enroll, other, "--device", "cpu", "--scoring",
                           "cosine", "--calibration", "none"]) == 0
    assert re.fullmatch(r"score -?\d\.\d{6}\n", capsys.readouterr().out)

    assert trainSpeakerNet.main(eval_command(model, test, tiny_corpus, tmp_path / "run")) == 0
    out = capsys.readouterr().out
    assert re.search(r"^EER \d+\.\d{4}$", out, re.M)
    assert re.search(r"^Cllr \d+\.\d{4}, minCllr \d\.\d{4}, actDCF\(p=0\.05\) \d+\.\d{4}, actDCF\(p=0\.01\) "
                     r"\d+\.\d{4}$", out, re.M)
    # for other scoring options the calibration is refused before anything is scored or written
    code = trainSpeakerNet.main(eval_command(model, test, tiny_corpus, tmp_path / "refused", "--scoring", "cosine"))
    err = capsys.readouterr().err
    assert code == 2 and f"{model}.calibration.json: calibration made for other scoring options" in err
    assert "scoring: calibrated with 'crops', now 'cosine'" in err and not (tmp_path / "refused").exists()
    # another model's calibration, given with --calibration
    second = random_checkpoint(tmp_path / "second.model", 4)
    code = trainSpeakerNet.main(eval_command(second, test, tiny_corpus, tmp_path / "refused", "--calibration",
                                             f"{model}.calibration.json"))
    assert code == 2 and "calibration made for other model weights" in capsys.readouterr().err
    # no calibration: minCllr alone, and how to get the rest
    assert trainSpeakerNet.main(eval_command(second, test, tiny_corpus, tmp_path / "second_run")) == 0
    assert re.search(r"^minCllr \d\.\d{4} \(Cllr and actDCF need a calibration: python inference.py calibrate\)$",
                     capsys.readouterr().out, re.M)
