"""Evaluation at scale: vectorised scores against the original's per-trial loop, embedding each file once, batched
extraction, AS-norm, several lists, saved scores and embeddings, and the validation list in training."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks.reference_scoring import reference_crop_scores
from spknet import evaluation
from spknet.checkpoints import checkpoint_spec
from spknet.data import AudioFolder, load_wav
from spknet.distributed import choose_device
from spknet.errors import SpeakerNetError
from spknet.evaluation import EvalOptions, Trial, compute_metrics, extraction, read_trial_list
from spknet.evaluation.runner import load_plan
from spknet.model import SpeakerNet
from tests.helpers import run_cli
from trainSpeakerNet import parse_args, spec_from_argv

CPU = torch.device("cpu")

SCORE = re.compile(r"^IT 1, LR \d+\.\d{6}, TEER/T1 \d+\.\d{2}, TLOSS -?\d+\.\d{6}, VEER (\d+\.\d{4})$")


pytestmark = pytest.mark.usefixtures("one_thread")        # conftest's: small forward passes on a shared box


ONE_THREAD = {"OMP_NUM_THREADS": "1"}      # the same for the command-line runs


# ---- scoring -----------------------------------------------------------------------------------------------------

def cosine_loop(embeddings, enroll, test, normalize):
    scores = []
    for e, t in zip(enroll.tolist(), test.tolist()):
        a, b = embeddings[e], embeddings[t]
        if normalize:
            a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        scores.append(F.cosine_similarity(a.mean(0), b.mean(0), dim=0).item())
    return np.array(scores)


def random_trials(files, count, generator):
    enroll = torch.randint(0, files, (count,), generator=generator)
    test = torch.randint(0, files, (count,), generator=generator)
    enroll[:3] = test[:3]                               # a file against itself: exactly zero distances
    return enroll, test


@pytest.mark.parametrize("crops", [10, 1])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("scoring", ["crops", "cosine"])
def test_vectorised_scores_equal_the_per_trial_loop(scoring, normalize, crops):
    generator = torch.Generator().manual_seed(crops + 2 * normalize)
    scale = 1 + 4 * torch.rand(40, crops, 1, generator=generator)
    embeddings = torch.randn(40, crops, 24, generator=generator) * scale
    embeddings[5] = embeddings[4] + 1e-4 * torch.randn(crops, 24, generator=generator)   # near-duplicate file
    enroll, test = random_trials(40, 500, generator)
    enroll[3], test[3] = 4, 5
    reference = (reference_crop_scores(embeddings, enroll, test, normalize) if scoring == "crops"
                 else cosine_loop(embeddings, enroll, test, normalize))
    tolerance = 1e-5 * max(1.0, np.abs(reference).max())
    ours = evaluation.TrialScorer(embeddings, scoring, normalize, chunk=64)(enroll, test).numpy()   # 8 chunks
    assert np.abs(ours - reference).max() <= tolerance
    # the same with the chunks shared by two threads
    if scoring == "crops":
        threaded = evaluation.crop_scores(embeddings, enroll, test, normalize, chunk=32, threads=2)
    else:
        means = evaluation.mean_embeddings(embeddings, normalize)
        threaded = evaluation.cosine_scores(means, enroll, test, chunk=32, threads=2)
    assert np.abs(threaded.numpy() - reference).max() <= tolerance


def test_crop_scores_keep_the_callers_thread_count():
    before = torch.get_num_threads()
    embeddings = torch.randn(20, 10, 8)
    evaluation.crop_scores(embeddings, torch.arange(20), torch.arange(20).flip(0), chunk=4, threads=2)
    assert torch.get_num_threads() == before


# ---- extraction --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    return SpeakerNet.build("ResNetSE34L", "mp_balance", nOut=16, with_loss=False).eval()


def test_each_file_embedded_once_in_batches(tiny_corpus, tiny_net, monkeypatch):
    trials = read_trial_list(tiny_corpus["test_list"])
    first, second = trials[:60], trials[40:100] + [Trial(None, trials[0].enroll, trials[99].test)]
    loads, forwards = [], []
    real_open, real_forward = AudioFolder.open, tiny_net.__S__.forward
    # count the passes of the network itself, not of the folded CPU copy (whose check forwards would count too)
    monkeypatch.setattr(extraction, "inference_copy", lambda model, example, channels_last: model)
    monkeypatch.setattr(AudioFolder, "open",
                        lambda self, name, *a, **k: loads.append(name) or real_open(self, name, *a, **k))
    monkeypatch.setattr(tiny_net.__S__, "forward", lambda x: forwards.append(x.shape[0]) or real_forward(x))
    store, (scores1, scores2) = evaluation.score_lists(tiny_net.__S__, True, [first, second], tiny_corpus["test_path"],
                                                       EvalOptions(20, files_per_batch=4, show_progress=False), CPU)
    files = {path for trial in first + second for path in (trial.enroll, trial.test)}
    assert sorted(files) == store.files
    assert len(loads) == len(files) == len(set(loads))                  # each unique file loaded once
    assert sum(forwards) == 10 * len(files) and max(forwards) == 40     # 4 files (40 crops) per forward pass
    # the shared trials have the same score in both lists
    assert np.allclose(scores1[40:], scores2[:20], atol=1e-6)
    # and every file's embedding is the one a forward of its crops alone gives
    name = store.files[7]
    with torch.no_grad():
        alone = real_forward(torch.from_numpy(load_wav(f"{tiny_corpus['test_path']}/{name}", 20)))
    assert torch.allclose(store.embeddings[7], alone, atol=1e-5)


def test_whole_files_are_batched_by_equal_length(tiny_corpus, tiny_net, monkeypatch, tmp_path):
    import soundfile as sf
    names = [t.enroll for t in read_trial_list(tiny_corpus["test_list"])[:6]]
    root = tiny_corpus["test_path"]
    audio, _ = sf.read(f"{root}/{names[0]}", dtype="int16")
    (tmp_path / "short").mkdir()
    sf.write(tmp_path / "short" / "a.wav", audio[:12000], 16000, subtype="PCM_16")     # a different length
    files = [f"{root}/{name}" for name in names] + [str(tmp_path / "short" / "a.wav")]
    forwards = []
    real_forward = tiny_net.__S__.forward
    monkeypatch.setattr(extraction, "inference_copy", lambda model, example, channels_last: model)
    monkeypatch.setattr(tiny_net.__S__, "forward", lambda x: forwards.append(tuple(x.shape)) or real_forward(x))
    embeddings = evaluation.embed_files(tiny_net.__S__, files, "", 0, CPU, files_per_batch=2, show_progress=False)
    assert embeddings.shape == (7, 1, 16)
    assert sorted(forwards) == [(1, 12000), (6, audio.shape[0])]        # the 6 files of equal length in one pass
    with torch.no_grad():
        for i in (0, 6):
            alone = real_forward(torch.from_numpy(load_wav(files[i], 0)))
            assert torch.allclose(embeddings[i], alone, atol=1e-4)


def test_threaded_extraction_with_a_loader_worker(tiny_corpus, tiny_net, monkeypatch):
    """Batches forwarded in two threads (one intra-op thread each) while a worker loads: same embeddings, same
    order, and the caller's thread count is kept."""
    monkeypatch.setattr(extraction, "available_cores", lambda: 3)      # a core left for the worker
    files = sorted({t.enroll for t in read_trial_list(tiny_corpus["test_list"])})[:7]
    model, root = tiny_net.__S__.eval(), tiny_corpus["test_path"]
    before = torch.get_num_threads()
    single = evaluation.extract_embeddings(model, files, root, 20, threads=1, files_per_batch=2, show_progress=False)
    threaded = evaluation.extract_embeddings(model, files, root, 20, num_workers=1, threads=2, files_per_batch=2,
                                             show_progress=False)
    assert torch.get_num_threads() == before
    assert threaded.shape == (7, 10, 16) and torch.allclose(single, threaded, atol=1e-6)


def test_cpu_loader_workers_only_on_spare_cores(monkeypatch):
    monkeypatch.setattr(extraction, "available_cores", lambda: 2)
    assert evaluation.cpu_loader_workers(5, forward_threads=2) == 0
    monkeypatch.setattr(extraction, "available_cores", lambda: 16)
    assert evaluation.cpu_loader_workers(5, forward_threads=8) == 5
    assert evaluation.cpu_loader_workers(5, forward_threads=14) == 2


def test_bf16_extraction_is_close_to_float32(tiny_corpus, tiny_net):
    files = sorted({t.enroll for t in read_trial_list(tiny_corpus["test_list"])})[:4]
    model, root = tiny_net.__S__.eval(), tiny_corpus["test_path"]
    full = evaluation.extract_embeddings(model, files, root, 20, show_progress=False)
    half = evaluation.extract_embeddings(model, files, root, 20, show_progress=False, precision="bf16")
    assert half.dtype == torch.float32 and half.shape == full.shape
    assert not torch.equal(half, full)                                  # the network really ran in bfloat16
    assert F.cosine_similarity(half, full, dim=-1).min() > 0.999


def test_fp16_extraction_needs_a_gpu():
    with pytest.raises(SpeakerNetError, match="fp16 needs a GPU"):
        spec_from_argv(["--eval_precision", "fp16"]).evaluation.check_device(choose_device("cpu").type)
    with pytest.raises(SystemExit):
        parse_args(["--eval_precision", "int8"])
    assert spec_from_argv(["--eval_precision", "bf16"]).evaluation.check_device("cpu").precision == "bf16"


@pytest.mark.slow
def test_fp16_evaluation_on_the_cpu_fails_before_any_work(tiny_corpus, tmp_path):
    save_path = tmp_path / "run"
    result = run_cli("--model", "ResNetSE34L", "--trainfunc", "mp_balance", "--nOut", "16", "--eval",
                     "--test_list", tiny_corpus["test_list"], "--test_path", tiny_corpus["test_path"],
                     "--save_path", save_path, "--device", "cpu", "--eval_precision", "fp16", env=ONE_THREAD)
    assert result.returncode != 0
    assert "--eval_precision fp16 needs a GPU" in result.stderr
    assert not (save_path / "result").exists()


def test_equal_length_batches():
    batches = evaluation.equal_length_batches([5, 7, 5, 5, 7, 9], files_per_batch=2, max_samples=100)
    assert batches == [[5], [1, 4], [0, 2], [3]]
    assert evaluation.equal_length_batches([60, 60, 60], 8, 100) == [[0], [1], [2]]


# ---- AS-norm -----------------------------------------------------------------------------------------------------

def test_as_norm_equals_the_per_trial_formula():
    rng = np.random.default_rng(0)
    cohort = rng.normal(size=(30, 50)) + rng.normal(size=(30, 1))
    scores = rng.normal(size=200)
    enroll, test = rng.integers(0, 30, 200), rng.integers(0, 30, 200)
    mean, std = evaluation.top_cohort_statistics(torch.tensor(cohort, dtype=torch.float32), 10)
    ours = evaluation.as_norm(torch.tensor(scores), enroll, test, mean, std).numpy()
    for i in range(200):
        top_e = np.sort(cohort[enroll[i]])[-10:]
        top_t = np.sort(cohort[test[i]])[-10:]
        expected = 0.5 * ((scores[i] - top_e.mean()) / top_e.std(ddof=1)
                          + (scores[i] - top_t.mean()) / top_t.std(ddof=1))
        assert ours[i] == pytest.approx(expected, abs=1e-4)


def test_an_unknown_eval_precision_is_an_error_naming_the_choices():
    net = SpeakerNet.build(model="ResNetSE34L", trainfunc="mp_balance", nOut=8, nSpeakers=4).__S__
    with pytest.raises(SpeakerNetError, match=r"unknown eval precision 'int8': choose fp32 or bf16 or fp16"):
        extraction.extract_embeddings(net, ["a.wav"], "", 20, CPU, precision="int8", show_progress=False)


@pytest.mark.parametrize("top_n,speakers", [(1, 30), (200, 1)])
def test_as_norm_with_fewer_than_two_cohort_scores_is_an_error_not_nan(top_n, speakers):
    scorer = evaluation.TrialScorer(torch.randn(4, 3, 8), "cosine", device=CPU)
    with pytest.raises(SpeakerNetError, match=rf"at least 2 top cohort scores.*cohort size {top_n} and a cohort "
                                              rf"of {speakers} speaker"):
        evaluation.cohort_statistics(scorer, torch.arange(4), torch.randn(speakers, 8), top_n)
    mean, std = evaluation.cohort_statistics(scorer, torch.arange(4), torch.randn(30, 8), 2)
    assert torch.isfinite(std).all() and (std > 0).all()


def test_an_unknown_scoring_is_an_error_naming_the_choices():
    with pytest.raises(SpeakerNetError, match=r"unknown scoring 'cosinus': choose crops or cosine"):
        evaluation.TrialScorer(torch.randn(4, 3, 8), "cosinus", device=CPU)


def test_as_norm_removes_a_per_file_bias():
    """Two groups of files, one with a score offset: AS-norm (whose cohort scores carry the same offset) lowers the
    EER. Each side's normalisation removes its own file's offset, so the offset of a trial (the sum of its two
    files') is halved relative to the target / non-target separation."""
    rng = np.random.default_rng(1)
    files, trials = 200, 4000
    bias = np.where(rng.random(files) < 0.5, 0.0, 3.0)
    enroll, test = rng.integers(0, files, trials), rng.integers(0, files, trials)
    labels = (rng.random(trials) < 0.3).astype(int)
    raw = 2.0 * labels + bias[enroll] + bias[test] + rng.normal(size=trials)
    cohort = torch.tensor(bias[:, None] + rng.normal(size=(files, 300)), dtype=torch.float32)
    mean, std = evaluation.top_cohort_statistics(cohort, 50)
    normed = evaluation.as_norm(torch.tensor(raw), enroll, test, mean, std).numpy()
    assert compute_metrics(normed, labels).eer < compute_metrics(raw, labels).eer - 5
    high = (bias[enroll] > 0) & (bias[test] > 0)
    low = (bias[enroll] == 0) & (bias[test] == 0)

    def relative_offset(s):        # non-target offset between the groups, in units of the target separation
        return (s[high & (labels == 0)].mean() - s[low & (labels == 0)].mean()) / \
            (s[low & (labels == 1)].mean() - s[low & (labels == 0)].mean())

    assert relative_offset(raw) == pytest.approx(3.0, rel=0.15)
    assert relative_offset(normed) == pytest.approx(1.5, rel=0.15)


@pytest.mark.parametrize("scoring", ["crops", "cosine"])
def test_cohort_statistics_in_chunks_equal_the_full_matrix(scoring):
    generator = torch.Generator().manual_seed(3)
    embeddings = torch.randn(25, 10, 16, generator=generator)
    labels = torch.arange(40) % 8
    speakers = evaluation.speaker_means(torch.randn(40, 10, 16, generator=generator), labels)
    scorer = evaluation.TrialScorer(embeddings, scoring, True)
    full = scorer.cohort_scores(torch.arange(25), speakers)
    assert full.shape == (25, 8)
    # a cohort score is the trial score with the speaker vector as a one-crop file
    pair = [embeddings[3], speakers[5:6]]
    reference = (reference_crop_scores(pair, [0], [1], normalize=True)[0] if scoring == "crops"
                 else F.cosine_similarity(F.normalize(pair[0], dim=1).mean(0), pair[1][0], dim=0).item())
    assert full[3, 5].item() == pytest.approx(reference, abs=1e-5)
    mean, std = evaluation.cohort_statistics(scorer, torch.arange(25), speakers, 5, chunk=4)
    expected_mean, expected_std = evaluation.top_cohort_statistics(full, 5)
    assert torch.allclose(mean, expected_mean, atol=1e-6) and torch.allclose(std, expected_std, atol=1e-6)


def test_cohort_files_per_speaker():
    labels = np.array([0, 0, 0, 0, 0, 1, 2, 2])
    picked = evaluation.pick_cohort_files(labels, 3)
    assert picked.tolist() == [0, 2, 4, 5, 6, 7]


@pytest.mark.slow
def test_asnorm_through_the_trainer(tiny_corpus, tiny_net, tmp_path):
    """The cohort comes from --train_list (up to --cohort_utterances files per speaker) and AS-norm changes the
    scores by a per-file affine map."""
    train_list = tmp_path / "train.txt"
    train_list.write_text("".join(open(tiny_corpus["train_list"]).readlines()[:48]))       # 8 speakers
    args = spec_from_argv(["--eval", "--test_list", tiny_corpus["test_list"], "--test_path", tiny_corpus["test_path"],
                          "--train_list", str(train_list), "--train_path", tiny_corpus["train_path"],
                          "--score_norm", "asnorm", "--cohort_utterances", "2", "--cohort_size", "4"])
    plan = plan_of(args)
    assert len(plan.cohort.files) == 16 and np.bincount(plan.cohort.speakers).tolist() == [2] * 8
    trials = plan.tests[0].trials[:30]
    raw = evaluation.score_lists(tiny_net.__S__, True, [trials], args.evaluation.test_path,
                                 EvalOptions(20, show_progress=False), CPU)[1][0]
    options = EvalOptions(20, score_norm="asnorm", cohort_size=4, show_progress=False)
    normed = evaluation.score_lists(tiny_net.__S__, True, [trials], args.evaluation.test_path, options, CPU,
                                    plan.cohort)[1][0]
    assert normed.shape == raw.shape and np.isfinite(normed).all() and not np.allclose(normed, raw)


# ---- the command line ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_eval_of_several_lists_saves_aligned_scores_and_embeddings(tiny_corpus, random_checkpoint, tmp_path):
    lines = open(tiny_corpus["test_list"]).read().splitlines()
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text("\n".join(lines[:40]) + "\n")
    second.write_text("\n".join(lines[30:50]) + "\n")
    scores_path, npz = tmp_path / "out" / "scores.txt", tmp_path / "emb.npz"
    result = run_cli("--model", "ResNetSE34L", "--trainfunc", "mp_balance", "--nOut", "16", "--nSpeakers", "40",
                     "--max_frames", "20", "--eval", "--initial_model", random_checkpoint,
                     "--test_list", f"{first},{second}", "--test_path", tiny_corpus["test_path"],
                     "--save_path", tmp_path / "run", "--save_scores", scores_path, "--save_embeddings", npz,
                     "--nDataLoaderThread", "0", env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert out.count("EER ") >= 4 and out.count("minDCF(p=0.05)") == 2 and out.count("minDCF(p=0.01)") == 2
    assert f"== {first}: 40 trials" in out and f"== {second}: 20 trials" in out
    assert re.search(r"EER \d+\.\d{4} \(threshold .*\), minDCF\(p=0\.05\) \d\.\d{4} \(threshold ", out)
    for name in ("first", "second"):
        assert (tmp_path / "run" / "result" / f"det_eval_{name}.png").is_file()
    saved = {name: [line.split() for line in (tmp_path / "out" / f"scores_{name}.txt").read_text().splitlines()]
             for name in ("first", "second")}
    assert [row[1:] for row in saved["first"]] == [line.split() for line in lines[:40]]
    assert [row[1:] for row in saved["second"]] == [line.split() for line in lines[30:50]]
    assert [row[0] for row in saved["first"][30:]] == [row[0] for row in saved["second"][:10]]
    embeddings = np.load(npz)
    files = {path for line in lines[:50] for path in line.split()[1:]}
    assert set(embeddings.files) == files
    assert all(embeddings[name].shape == (10, 16) for name in files)
    # the saved score of a trial is the original's score of the saved embeddings
    for row in saved["second"][::7]:
        pair = torch.stack([torch.from_numpy(embeddings[row[2]]), torch.from_numpy(embeddings[row[3]])])
        expected = reference_crop_scores(pair, [0], [1], normalize=True)[0]
        assert float(row[0]) == pytest.approx(expected, abs=2e-6)


@pytest.mark.slow
def test_training_with_a_validation_list(tiny_corpus, tmp_path):
    """One epoch: VEER is the first test list's, the INFO line adds the validation EER, which drives the .eer file
    and the scheduler; a second test list gets its own INFO line."""
    lines = open(tiny_corpus["test_list"]).read().splitlines()
    test_a, test_b, val = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "val.txt"
    test_a.write_text("\n".join(lines[:60]) + "\n")
    test_b.write_text("\n".join(lines[60:100]) + "\n")
    val.write_text("\n".join(lines[100:170]) + "\n")
    train_list = tmp_path / "train.txt"
    train_list.write_text("".join(open(tiny_corpus["train_list"]).readlines()[:96]))       # 16 speakers
    save_path = tmp_path / "run"
    result = run_cli("--model", "ResNetSE34L", "--trainfunc", "mp_balance", "--nOut", "32",
                     "--train_list", train_list, "--train_path", tiny_corpus["train_path"],
                     "--test_list", f"{test_a},{test_b}", "--val_list", val, "--test_path", tiny_corpus["test_path"],
                     "--save_path", save_path, "--max_frames", "50", "--batch_size", "8", "--max_epoch", "1",
                     "--nDataLoaderThread", "0", env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (save_path / "result" / "scores.txt").read_text().splitlines()
    it_lines = [line for line in log if line.startswith("IT ")]
    assert len(it_lines) == 1 and SCORE.match(it_lines[0])
    veer = SCORE.match(it_lines[0]).group(1)
    info = [line for line in log if line.startswith("INFO epoch 1")]
    main_info = re.match(r"^INFO epoch 1: EER (\d+\.\d{4}), minDCF\(p=0\.05\) \d\.\d{4}, minDCF\(p=0\.01\) \d\.\d{4}, "
                         r"val EER (\d+\.\d{4}), train .* s, eval .* s, data wait \d+%$", info[0])
    assert main_info and main_info.group(1) == veer, info
    val_eer = main_info.group(2)
    assert any(line.startswith(f"INFO epoch 1 list {test_b}: EER ") for line in info[1:])
    assert any(line.startswith(f"INFO epoch 1 val {val}: EER {val_eer},") for line in info[1:])
    assert (save_path / "model" / "model000000001.eer").read_text() == val_eer
    checkpoint = torch.load(save_path / "model" / "model000000001.model", weights_only=True)
    assert checkpoint["last_eer"] == pytest.approx(float(val_eer), abs=1e-4)
    # the run's resolved configuration, which --config reads back as it is
    config = parse_args(["--config", str(save_path / "config.yaml")])
    assert config.val_list == str(val) and config.nSpeakers == 16 and config.eval_frames == 50
    again = spec_from_argv(["--config", str(save_path / "config.yaml")])
    assert again.model == again.model.resolved() == checkpoint_spec(checkpoint, "run")   # every option recorded
    for name in ("a", "b"):
        assert (save_path / "result" / f"det_{name}.png").is_file()


def plan_of(spec, training: bool = False):
    return load_plan(spec.evaluation, spec.data, training)


def test_bad_evaluation_flags_fail_before_work(tiny_corpus, tmp_path):
    base = ["--eval", "--test_path", tiny_corpus["test_path"], "--save_path", str(tmp_path / "run")]
    args = spec_from_argv(base + ["--test_list", f"{tiny_corpus['test_list']},{tiny_corpus['test_list']}"])
    with pytest.raises(SpeakerNetError, match="names a list twice"):
        plan_of(args)
    args = spec_from_argv(base + ["--test_list", tiny_corpus["test_list"], "--score_norm", "asnorm"])
    with pytest.raises(SpeakerNetError, match="needs --train_list"):
        plan_of(args)
    unlabelled = tmp_path / "u.txt"
    unlabelled.write_text("".join(" ".join(line.split()[1:]) + "\n" for line in open(tiny_corpus["test_list"])))
    args = spec_from_argv(["--test_list", tiny_corpus["test_list"], "--val_list", str(unlabelled),
                          "--test_path", tiny_corpus["test_path"]])
    with pytest.raises(SpeakerNetError, match="needs a labelled trial list"):
        plan_of(args, training=True)


def test_benchmark_runs_at_a_tiny_size():
    from benchmarks import bench_eval as bench

    results = bench.main(["--files", "300", "--trials", "600", "--loop_trials", "60", "--repeats", "1",
                          "--extract_files", "3", "--extract_seconds", "1", "--eval_frames", "20", "--rounds", "1",
                          "--workers", "0", "--eval_batch_size", "2"])
    assert results["scoring"]["difference"] < 1e-5
    assert results["extraction"]["ours fp32"]["difference"] < 1e-4
    assert results["extraction"]["ours bf16"]["min_cosine"] > 0.999
    assert results["extraction"]["original"]["speedup"] == 1.0


def test_a_labelled_list_with_one_class_fails_before_training(tiny_corpus, tmp_path):
    targets = tmp_path / "targets.txt"
    targets.write_text("".join(line for line in open(tiny_corpus["test_list"]) if line.startswith("1 ")))
    args = spec_from_argv(["--trainfunc", "mp_balance", "--test_list", str(targets), "--test_path",
                           tiny_corpus["test_path"]])
    with pytest.raises(SpeakerNetError, match=re.escape(f"{targets}: every trial has label 1; an EER needs both")):
        plan_of(args, training=True)


def test_eval_builds_no_loss_optimizer_or_scheduler(tiny_corpus, random_checkpoint, tmp_path, monkeypatch, capsys):
    import trainSpeakerNet
    from spknet import plugins
    loaded = []
    real_load = plugins.load
    monkeypatch.setattr(plugins, "load", lambda package, name: loaded.append(package) or real_load(package, name))
    lines = open(tiny_corpus["test_list"]).read().splitlines()[:20]
    trials = tmp_path / "trials.txt"
    trials.write_text("\n".join(lines) + "\n")
    code = trainSpeakerNet.main(["--model", "ResNetSE34L", "--trainfunc", "mp_balance", "--nOut", "16",
                                 "--max_frames", "20", "--eval", "--initial_model", str(random_checkpoint),
                                 "--test_list", str(trials), "--test_path", tiny_corpus["test_path"],
                                 "--save_path", str(tmp_path / "run"), "--nDataLoaderThread", "0"])
    assert code == 0 and re.search(r"^EER \d+\.\d{4}$", capsys.readouterr().out, re.M)
    assert "optimizer" not in loaded and "scheduler" not in loaded and loaded.count("models") == 1
