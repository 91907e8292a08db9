"""One embedding extractor: --eval, inference.py calibrate, inference.py verify and Embedder.embed_files give the same
scores (files at any rate and channel count included), and no extraction or scoring changes the caller's thread
count."""

import os
import threading

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

import inference
import SpeakerNet
import trainSpeakerNet
from spknet import calibration as calibrations
from spknet import evaluation
from spknet.evaluation import read_trial_list

NOUT = 16
EVAL_FRAMES = 30
# labelled trials over the files of one folder: b is at 8 kHz, c is stereo, d at 44.1 kHz stereo
TRIALS = [("1", "a.wav", "b.wav"), ("0", "a.wav", "c.wav"), ("1", "c.wav", "d.wav"), ("0", "b.wav", "e.wav"),
          ("1", "e.wav", "a.wav"), ("0", "d.wav", "b.wav")]


@pytest.fixture(scope="module")
def setup(tiny_corpus, tmp_path_factory):
    """A random checkpoint as the original saves it, and a folder of five files with its labelled trial list."""
    folder = tmp_path_factory.mktemp("one_extractor")
    torch.manual_seed(5)
    model = str(folder / "m.model")
    torch.save(SpeakerNet.SpeakerNet.build("ResNetSE34L", "mp_balance", nOut=NOUT, nSpeakers=40).state_dict(), model)
    sources = sorted({trial.enroll for trial in read_trial_list(tiny_corpus["test_list"])})[:5]
    root = folder / "wav"
    root.mkdir()
    for name, source, (rate, channels) in zip("abcde", sources, ((16000, 1), (8000, 1), (16000, 2), (44100, 2),
                                                                  (16000, 1))):
        audio, _ = sf.read(os.path.join(tiny_corpus["test_path"], source), dtype="float32")
        wave = torchaudio.functional.resample(torch.from_numpy(audio), 16000, rate).numpy()
        channels_of = np.stack([wave, 0.5 * wave][:channels], axis=1)      # the mean is not either channel
        sf.write(root / f"{name}.wav", channels_of, rate, subtype="PCM_16")
    trials = folder / "trials.txt"
    trials.write_text("".join(" ".join(trial) + "\n" for trial in TRIALS))
    return model, str(trials), str(root)


def mode_flags(eval_frames, scoring):
    return ["--eval_frames", str(eval_frames), "--scoring", scoring]


def eval_scores(model, trials, root, eval_frames, scoring, tmp_path) -> np.ndarray:
    path = tmp_path / f"scores_{eval_frames}_{scoring}.txt"
    code = trainSpeakerNet.main(["--model", "ResNetSE34L", "--trainfunc", "mp_balance", "--nOut", str(NOUT),
                                 "--eval", "--initial_model", model, "--test_list", trials, "--test_path", root,
                                 "--save_path", str(tmp_path / f"run_{eval_frames}_{scoring}"),
                                 "--nDataLoaderThread", "0", "--save_scores", str(path),
                                 *mode_flags(eval_frames, scoring)])
    assert code == 0
    return np.array([float(line.split()[0]) for line in path.read_text().splitlines()])


def calibrate_scores(model, trials, root, eval_frames, scoring, tmp_path, monkeypatch) -> np.ndarray:
    fitted_on = []
    real = calibrations.calibrate
    monkeypatch.setattr(calibrations, "calibrate",
                        lambda scores, *args, **kwargs: fitted_on.append(np.array(scores)) or real(scores, *args,
                                                                                                   **kwargs))
    code = inference.main(["calibrate", "--initial_model", model, "--test_list", trials, "--test_path", root,
                           "--device", "cpu", "--nDataLoaderThread", "0", "--out",
                           str(tmp_path / f"cal_{eval_frames}_{scoring}.json"), *mode_flags(eval_frames, scoring)])
    assert code == 0 and len(fitted_on) == 1
    return fitted_on[0]


def verify_scores(model, root, eval_frames, scoring, capsys) -> np.ndarray:
    scores = []
    for _, enroll, test in TRIALS:
        capsys.readouterr()
        code = inference.main(["verify", "--initial_model", model, os.path.join(root, enroll),
                               os.path.join(root, test), "--device", "cpu", "--calibration", "none",
                               *mode_flags(eval_frames, scoring)])
        assert code == 0
        printed = capsys.readouterr().out.split()
        assert printed[0] == "score"
        scores.append(float(printed[1]))
    return np.array(scores)


def embedder_scores(model, root, eval_frames, scoring) -> np.ndarray:
    embedder = SpeakerNet.load_embedder(model, device="cpu", eval_frames=eval_frames, scoring=scoring,
                                        calibration=None)
    names = sorted({name for _, enroll, test in TRIALS for name in (enroll, test)})
    embeddings = dict(zip(names, embedder.embed_files([os.path.join(root, name) for name in names])))
    assert all(embedding.shape == ((1 if eval_frames == 0 else 10), NOUT) for embedding in embeddings.values())
    return np.array([embedder.score_embeddings(embeddings[enroll], embeddings[test]) for _, enroll, test in TRIALS])


@pytest.mark.slow
@pytest.mark.parametrize("eval_frames,scoring", [(0, "crops"), (0, "cosine"), (EVAL_FRAMES, "crops"),
                                                 (EVAL_FRAMES, "cosine")])
def test_eval_calibrate_verify_and_embed_files_give_one_score(setup, tmp_path, monkeypatch, capsys, eval_frames,
                                                              scoring):
    model, trials, root = setup
    from_eval = eval_scores(model, trials, root, eval_frames, scoring, tmp_path)      # written with 6 decimals
    from_calibrate = calibrate_scores(model, trials, root, eval_frames, scoring, tmp_path, monkeypatch)
    from_verify = verify_scores(model, root, eval_frames, scoring, capsys)             # printed with 6 decimals
    from_embedder = embedder_scores(model, root, eval_frames, scoring)
    assert len(from_eval) == len(from_calibrate) == len(from_verify) == len(from_embedder) == len(TRIALS)
    print(f"agreement with embed_files, eval_frames {eval_frames}, {scoring}: calibrate "
          f"{np.abs(from_calibrate - from_embedder).max():.1e}, --eval {np.abs(from_eval - from_embedder).max():.1e}, "
          f"verify {np.abs(from_verify - from_embedder).max():.1e}")
    assert np.abs(from_calibrate - from_embedder).max() <= 1e-6
    assert np.abs(from_eval - from_embedder).max() <= 1e-6
    assert np.abs(from_verify - from_embedder).max() <= 1e-6
    assert np.abs(from_verify - from_eval).max() <= 1e-6 + 1e-12     # both rounded: one unit of the 6th decimal
    assert len(set(np.round(from_embedder, 4))) > 1             # real scores, not one constant


def test_arrays_and_files_give_the_same_crops_and_embeddings(setup):
    model, _, root = setup
    for eval_frames in (0, EVAL_FRAMES):
        embedder = SpeakerNet.load_embedder(model, device="cpu", eval_frames=eval_frames, calibration=None)
        for name in ("a.wav", "b.wav", "d.wav"):
            path = os.path.join(root, name)
            samples, rate = sf.read(path, dtype="int16")
            assert np.allclose(embedder.crops(samples, rate), embedder.crops(path), rtol=0, atol=0.5)
            from_file, from_array = embedder.embed([path, torch.from_numpy(samples.T.copy())], sample_rate=rate)
            assert torch.allclose(from_file, from_array, atol=1e-4)


def fresh_thread_count() -> int:
    counts = []
    thread = threading.Thread(target=lambda: counts.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return counts[0]


def test_no_extraction_or_scoring_changes_the_callers_thread_count(setup):
    model, _, root = setup
    files = [os.path.join(root, f"{name}.wav") for name in "abcde"]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        embedder = SpeakerNet.load_embedder(model, device="cpu", eval_frames=EVAL_FRAMES, calibration=None)
        embeddings = torch.stack(embedder.embed_files(files))
        embedder.score(files[0], np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32))
        evaluation.extract_embeddings(embedder.network, files, "", 0, threads=2, show_progress=False)
        index = torch.arange(len(files))
        evaluation.crop_scores(embeddings, index, index.flip(0), threads=2, chunk=1)
        evaluation.cosine_scores(evaluation.mean_embeddings(embeddings), index, index.flip(0), chunk=1, threads=2)
        assert torch.get_num_threads() == 2
        assert fresh_thread_count() == 2            # threads started later begin with the caller's count too
    finally:
        torch.set_num_threads(before)
