"""Quality-aware calibration (``inference.py calibrate --quality duration``): the enrolment and test durations
(log seconds) enter the logistic regression, the file records the measures, and applying it (``--eval``,
``verify``) computes the same features from the audio files' headers."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

import inference
import SpeakerNet
import trainSpeakerNet
from spknet import calibration as calibrations
from spknet.calibration import Calibration, calibrate, fit_affine, trial_quality
from spknet.errors import SpeakerNetError
from spknet.evaluation.metrics import act_dcf, cllr
from spknet.model import SpeakerNet as Net

DRIFT = 0.5         # how far every score moves per unit of log duration (of each side)


def duration_trials(rng, count: int):
    """Trials whose scores drift with the durations: ``s = base + DRIFT * (log d_e + log d_t - mean)``, the base
    N(2, 1) for targets and N(0, 1) for non-targets. The true LLR is ``2 s - 2 - 2 DRIFT (log d_e + log d_t -
    mean)``: linear in the score and both log durations, and the score alone cannot calibrate it."""
    labels = (rng.random(count) < 0.3).astype(int)
    seconds = np.exp(rng.uniform(np.log(1.0), np.log(30.0), (count, 2)))
    logs = np.log(seconds)
    base = np.where(labels == 1, rng.normal(2.0, 1.0, count), rng.normal(0.0, 1.0, count))
    scores = base + DRIFT * (logs.sum(axis=1) - np.log(30.0))
    return scores, labels, seconds


def measures(llrs, labels):
    return {"cllr": cllr(llrs, labels), "act_dcf_0.05": act_dcf(llrs, labels, 0.05),
            "act_dcf_0.01": act_dcf(llrs, labels, 0.01)}


def test_durations_improve_the_held_out_calibration(capsys):
    """Fitted on one half, measured on the other: with the durations, Cllr and actDCF are lower."""
    scores, labels, seconds = duration_trials(np.random.default_rng(0), 20_000)
    quality = calibrations.quality_features(["duration"], seconds[:, 0], seconds[:, 1])
    dev, held = slice(0, 10_000), slice(10_000, None)
    scale, offset = fit_affine(scores[dev], labels[dev])
    plain = measures(scale * scores[held] + offset, labels[held])
    scale, offset, weights = fit_affine(scores[dev], labels[dev], quality[dev])
    aware = measures(scale * scores[held] + offset + quality[held] @ weights, labels[held])
    with capsys.disabled():
        for name, values in (("score alone", plain), ("with durations", aware)):
            print(f"\nheld-out 10000 trials, {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
    assert aware["cllr"] < plain["cllr"] - 0.05
    assert aware["act_dcf_0.05"] < plain["act_dcf_0.05"] and aware["act_dcf_0.01"] < plain["act_dcf_0.01"]
    # the regression finds the generating model: llr = 2 s - 2 + 2 DRIFT log 30 - 2 DRIFT (log d_e + log d_t)
    assert scale == pytest.approx(2.0, rel=0.08)
    assert weights == pytest.approx([-2 * DRIFT, -2 * DRIFT], rel=0.08)


def fitted_with_quality(tmp_path):
    scores, labels, seconds = duration_trials(np.random.default_rng(1), 4000)
    quality = calibrations.quality_features(["duration"], seconds[:, 0], seconds[:, 1])
    (tmp_path / "dev.txt").write_text("1 a.wav b.wav\n")
    return calibrate(scores, labels, "0" * 64, {"scoring": "crops"}, str(tmp_path / "dev.txt"),
                     quality_measures=["duration"], quality=quality), scores, quality


def test_a_quality_calibration_round_trips(tmp_path):
    fitted, scores, quality = fitted_with_quality(tmp_path)
    assert fitted.metrics["after"]["cllr"] < fitted.metrics["before"]["cllr"]
    path = tmp_path / "m.model.calibration.json"
    fitted.save(str(path))
    saved = json.loads(path.read_text())
    assert saved["version"] == 2 and saved["quality"] == ["duration"] and len(saved["quality_weights"]) == 2
    loaded = Calibration.load(str(path))
    assert loaded.to_json() == fitted.to_json()
    assert np.array_equal(loaded.llr(scores, quality), fitted.llr(scores, quality))
    assert "* log_seconds_enroll" in loaded.formula() and "* log_seconds_test" in loaded.formula()
    with pytest.raises(SpeakerNetError, match=rf"{path}: uses the quality measures duration"):
        loaded.llr(scores)
    # one trial decided with its durations
    assert loaded.decide(scores[0], quality=quality[0]).llr == pytest.approx(fitted.llr(scores, quality)[0])


@pytest.mark.parametrize("change, message", [
    (lambda data: {**data, "quality": ["loudness"]}, "'quality' should list quality measures of duration"),
    (lambda data: {**data, "quality_weights": [1.0]}, "'quality_weights' should hold 2 finite numbers"),
    (lambda data: {**data, "quality_weights": [1.0, "x"]}, "'quality_weights' should hold 2"),
    (lambda data: {**data, "version": 1}, "a version 1 calibration file with quality measures"),
])
def test_a_damaged_quality_calibration_is_named(tmp_path, change, message):
    fitted, _, _ = fitted_with_quality(tmp_path)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(change(fitted.to_json())))
    with pytest.raises(SpeakerNetError, match=f"{path}: .*{message}"):
        Calibration.load(str(path))


def test_an_old_calibration_file_still_loads(tmp_path):
    """A version-1 file as SpeakerNet wrote it before quality measures existed."""
    old = {"format": "speakernet-calibration", "version": 1, "scale": 8.0, "offset": -2.0, "weights_sha256": "ab",
           "scoring": {"scoring": "crops"}, "trial_list": {"path": "/d.txt", "sha256": "cd"},
           "trials": {"target": 10, "non_target": 90}, "model": "", "fit": "logistic regression", "metrics": None}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    loaded = Calibration.load(str(path))
    assert loaded.quality is None and loaded.features == []
    assert loaded.llr(0.5) == pytest.approx(2.0) and loaded.formula() == "llr = 8 * score - 2"
    assert loaded.to_json() == old                      # saved again unchanged: still version 1, no quality fields


def test_trial_durations_come_from_the_headers(tmp_path):
    sf.write(tmp_path / "one.wav", np.zeros(16000, dtype=np.int16), 16000)
    sf.write(tmp_path / "three.wav", np.zeros((3 * 48000, 2), dtype=np.int16), 48000)     # 48 kHz stereo
    trials = [SimpleNamespace(enroll="one.wav", test="three.wav"), SimpleNamespace(enroll="three.wav",
                                                                                   test="one.wav")]
    features = trial_quality(["duration"], trials, str(tmp_path))
    assert features == pytest.approx(np.log([[1.0, 3.0], [3.0, 1.0]]))


# ---- the commands -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def varied_corpus(tmp_path_factory):
    """A small corpus whose test files last 1.5 to 4 s."""
    from spknet.data.synthetic import make_corpus
    corpus = make_corpus(str(tmp_path_factory.mktemp("varied")), speakers=4, utterances=2, test_speakers=8,
                         test_utterances=6, trials=160, min_duration=1.5, max_duration=4.0, seed=3)
    return corpus


@pytest.mark.slow
def test_calibrate_with_durations_then_verify_and_eval_use_them(varied_corpus, tmp_path, capsys):
    import torch
    torch.manual_seed(0)
    model = str(tmp_path / "m.model")
    torch.save(Net.build("ResNetSE34L", "mp_balance", nOut=16, nSpeakers=4).state_dict(), model)
    root, trials = varied_corpus["test_path"], varied_corpus["test_list"]
    assert inference.main(["calibrate", "--initial_model", model, "--test_list", trials, "--test_path", root,
                           "--device", "cpu", "--nDataLoaderThread", "0", "--quality", "duration"]) == 0
    assert "* log_seconds_test" in capsys.readouterr().out
    saved = Calibration.load(model + ".calibration.json")
    assert saved.quality == ["duration"] and len(saved.quality_weights) == 2

    enroll, test = (os.path.join(root, path) for path in open(trials).readline().split()[1:])
    assert inference.main(["verify", "--initial_model", model, enroll, test, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.splitlines()
    score, llr = float(printed[0].split()[1]), float(printed[1].split()[1])
    durations = np.log([sf.info(enroll).duration, sf.info(test).duration])
    expected = saved.scale * score + saved.offset + durations @ np.array(saved.quality_weights)
    assert llr == pytest.approx(expected, abs=abs(saved.scale) * 1e-6 + 1e-5)
    embedder = SpeakerNet.load_embedder(model, device="cpu")           # arrays: their length at their rate
    audio = sf.read(enroll, dtype="float32")[0], sf.read(test, dtype="float32")[0]
    assert embedder.verify(*audio).llr == pytest.approx(llr, abs=1e-4)

    assert trainSpeakerNet.main(["--model", "ResNetSE34L", "--trainfunc", "mp_balance", "--nOut", "16",
                                 "--eval_frames", "0", "--eval", "--initial_model", model, "--test_list", trials,
                                 "--test_path", root, "--save_path", str(tmp_path / "run"),
                                 "--nDataLoaderThread", "0"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("Cllr "))
    reported = float(line.split(",")[0].split()[1])
    assert reported == pytest.approx(saved.metrics["after"]["cllr"], abs=1e-3)    # the same list, same features
