"""Learning, not speed: the EER our trainer reaches next to a loop written the way voxceleb_trainer's
``train_network`` and ``evaluateFromList`` are, same network, loss, batch shape and budget, over several seeds
(issue "Results at least as good as voxceleb_trainer's", item 3).

(a) **ours**: ``trainSpeakerNet.main`` in this process, one fresh ``--save_path`` per seed, SGD + steplr; the
    final VEER is read from ``save_path/result/scores.txt``. ``--ours_args "..."`` adds flags (e.g.
    ``--audio_scale float --pad wrap --window hamming --short_files whole``).
(b) **reference**: float input in [-1, 1], wrap padding, random crops, Hamming window, voxceleb_trainer's
    sampler grouping (groups of 2 per speaker, shuffled, a group whose speaker is already in the batch dropped),
    SGD (momentum 0.9, weight decay 5e-5) with StepLR stepped per epoch; evaluation from 10 evenly spaced crops
    per file (``--eval_frames 0``: the whole file), score = minus the mean distance over the 10 x 10 crop pairs.

(c) **networks**: with ``--networks A,B`` (and ``--losses X,Y``, default ``--trainfunc``) only our trainer runs,
    each network at its own defaults (only ``--model`` and ``--trainfunc`` change between runs), every (network,
    loss, seed) once; printed as one markdown table (parameters of the embedding network, VEER per seed, mean +-
    sample sd, seconds per run). Each run is added to ``--results`` (JSON, written atomically after every run), so
    an interrupted sweep run again with the same settings trains only the runs it lacks. Every network and loss is
    checked before the first run: a flag trainSpeakerNet refuses, or crops shorter than a network takes (VGGVox:
    63 frames), stop the sweep with status 2 before anything trains.

The corpus is synthetic (``tools/synthetic_corpus.py``, made in a temporary folder) unless ``--corpus DIR`` names
one written by ``dataprep.py --synthetic`` (train_list.txt, veri_test.txt, wav/).

    python -m benchmarks.bench_learning                              # 3 seeds, 5 epochs, both arms
    python -m benchmarks.bench_learning --ours_args "--audio_scale float --pad wrap --window hamming"
    python -m benchmarks.bench_learning --networks ResNetSE34L,CAMPPlus --losses mp_balance,aamsoftmax \
        --max_frames 50 --results exps/bench_learning.json
"""

import argparse
import json
import math
import os
import random
import re
import shlex
import statistics
import sys
import tempfile
import time

import numpy as np
import soundfile as sf
import torch

import trainSpeakerNet
from spknet import atomic, cli, plugins
from spknet.data.audio import max_audio_samples
from spknet.errors import SpeakerNetError
from spknet.evaluation import compute_metrics
from spknet.loss._common import IMBALANCED
from spknet.model import SpeakerNet

MODEL = "ResNetSE34L"
PER_SPEAKER = 2
NUM_EVAL = 10
SMALL_CORPUS = {"speakers": 60, "utterances": 8, "test_speakers": 12, "test_utterances": 8, "trials": 600,
                "seed": 0}
VEER = re.compile(r"VEER (\d+\.\d+)")
RESULTS = os.path.join("exps", "bench_learning.json")
# the options that decide what a sweep's run computes: a results file holds runs of one setting only
SETTINGS = ("epochs", "batch_size", "max_frames", "eval_frames", "lr", "lr_decay", "test_interval", "ours_args",
            "device")
RUN_KEYS = {"network", "loss", "seed", "veer", "seconds", "params"}


def fail(message: str):
    """Bad input: one line on stderr and status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


# ------------------------------------------------------------------------------------------------------------
# corpus
# ------------------------------------------------------------------------------------------------------------

def corpus_paths(folder: str) -> dict:
    """The lists and the audio root of a corpus folder (``dataprep.py --synthetic`` layout)."""
    paths = {"train_list": os.path.join(folder, "train_list.txt"), "test_list": os.path.join(folder, "veri_test.txt"),
             "wav": os.path.join(folder, "wav")}
    for path in paths.values():
        if not os.path.exists(path):
            fail(f"{path} not found (expected train_list.txt, veri_test.txt and wav/ in {folder})")
    return paths


def make_small_corpus(folder: str, **config) -> dict:
    from spknet.data.synthetic import make_corpus

    make_corpus(folder, **{**SMALL_CORPUS, **config})
    return corpus_paths(folder)


def read_train(paths: dict) -> tuple[list[str], list[int]]:
    """Files (full paths) and speaker indices (speakers numbered in sorted name order)."""
    with open(paths["train_list"], encoding="utf-8") as handle:
        pairs = [line.split() for line in handle if line.strip()]
    index = {name: i for i, name in enumerate(sorted({speaker for speaker, _ in pairs}))}
    return [os.path.join(paths["wav"], path) for _, path in pairs], [index[speaker] for speaker, _ in pairs]


def read_trials(paths: dict) -> list[tuple[int, str, str]]:
    with open(paths["test_list"], encoding="utf-8") as handle:
        return [(int(label), enroll, test) for label, enroll, test in (line.split() for line in handle if line.strip())]


# ------------------------------------------------------------------------------------------------------------
# reference: audio, sampler, training, evaluation
# ------------------------------------------------------------------------------------------------------------

def max_audio(frames: int) -> int:
    return frames * 160 + 240


def read_float(path: str) -> np.ndarray:
    audio, _ = sf.read(path, dtype="float32")
    return audio if audio.ndim == 1 else audio[:, 0]


def wrap_pad(audio: np.ndarray, length: int) -> np.ndarray:
    """voxceleb_trainer's padding of a file no longer than ``length``: wrapped, one sample longer."""
    if audio.shape[0] <= length:
        audio = np.pad(audio, (0, length - audio.shape[0] + 1), "wrap")
    return audio


def train_crop(path: str, frames: int) -> np.ndarray:
    length = max_audio(frames)
    audio = wrap_pad(read_float(path), length)
    start = int(random.random() * (audio.shape[0] - length))
    return audio[start:start + length]


def eval_crops(path: str, frames: int) -> np.ndarray:
    """(10, samples) evenly spaced crops, or (1, whole file) when ``frames`` is 0."""
    audio = read_float(path)
    if frames == 0:
        return audio[None, :]
    length = max_audio(frames)
    audio = wrap_pad(audio, length)
    starts = np.linspace(0, audio.shape[0] - length, num=NUM_EVAL).astype(np.int64)
    return np.stack([audio[start:start + length] for start in starts])


def speaker_groups(labels: list[int], rng: np.random.Generator) -> list[tuple[int, list[int]]]:
    """Each speaker's files shuffled and cut into groups of PER_SPEAKER (a remainder dropped)."""
    by_speaker = {}
    for index, label in enumerate(labels):
        by_speaker.setdefault(label, []).append(index)
    groups = []
    for label in sorted(by_speaker):
        files = list(rng.permutation(by_speaker[label]))
        usable = len(files) - len(files) % PER_SPEAKER
        groups += [(label, files[i:i + PER_SPEAKER]) for i in range(0, usable, PER_SPEAKER)]
    return groups


def epoch_batches(labels: list[int], batch_size: int, rng: np.random.Generator) -> list[list[tuple]]:
    """voxceleb_trainer's sampler: groups shuffled, a group dropped when its speaker is already in the batch
    being filled, and the last, incomplete batch dropped."""
    groups = speaker_groups(labels, rng)
    batches, current = [], []
    for position in rng.permutation(len(groups)):
        group = groups[position]
        if any(label == group[0] for label, _ in current):
            continue
        current.append(group)
        if len(current) == batch_size:
            batches.append(current)
            current = []
    return batches


def batch_tensors(batch: list[tuple], files: list[str], frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Waves (groups * PER_SPEAKER, samples), group-major, and the label of each utterance."""
    waves = [train_crop(files[index], frames) for _, members in batch for index in members]
    labels = [label for label, members in batch for _ in members]
    return torch.from_numpy(np.stack(waves)), torch.tensor(labels, dtype=torch.long)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def reference_train(options, paths: dict, seed: int, device: torch.device) -> SpeakerNet:
    files, labels = read_train(paths)
    seed_everything(seed)
    net = SpeakerNet.build(model=MODEL, trainfunc=options.trainfunc, nOut=512, window="hamming",
                     nSpeakers=max(labels) + 1).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=options.lr, momentum=0.9, weight_decay=5e-5)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=options.test_interval, gamma=options.lr_decay)
    for epoch in range(1, options.epochs + 1):
        net.train()
        for batch in epoch_batches(labels, options.batch_size, np.random.default_rng([seed, epoch])):
            waves, label = batch_tensors(batch, files, options.max_frames)
            net.zero_grad()
            loss, _ = net(waves.to(device), label.to(device), len(batch))
            loss.backward()
            optimizer.step()
        scheduler.step()
    return net


@torch.no_grad()
def reference_eer(net: SpeakerNet, paths: dict, eval_frames: int, device: torch.device) -> float:
    net.eval()
    trials = read_trials(paths)
    embeddings = {}
    for name in sorted({name for _, enroll, test in trials for name in (enroll, test)}):
        crops = torch.from_numpy(eval_crops(os.path.join(paths["wav"], name), eval_frames)).to(device)
        embedding = net.__S__(crops)
        embeddings[name] = torch.nn.functional.normalize(embedding, p=2, dim=1) if net.test_normalize else embedding
    scores = [-torch.cdist(embeddings[enroll], embeddings[test]).mean().item() for _, enroll, test in trials]
    return float(compute_metrics(scores, [label for label, _, _ in trials]).eer)


def run_reference(options, paths: dict, seed: int) -> float:
    device = torch.device(options.device)
    return reference_eer(reference_train(options, paths, seed, device), paths, options.eval_frames, device)


# ------------------------------------------------------------------------------------------------------------
# ours
# ------------------------------------------------------------------------------------------------------------

def ours_argv(options, paths: dict, seed: int, save_path: str, model: str = MODEL, trainfunc: str = "") -> list[str]:
    """trainSpeakerNet's flags for one run of ``model`` with ``trainfunc`` (default ``--trainfunc``)."""
    trainfunc = trainfunc or options.trainfunc
    argv = ["--model", model, "--trainfunc", trainfunc, "--train_list", paths["train_list"],
            "--train_path", paths["wav"], "--test_list", paths["test_list"], "--test_path", paths["wav"],
            "--save_path", save_path, "--max_epoch", options.epochs, "--batch_size", options.batch_size,
            "--max_frames", options.max_frames, "--eval_frames", options.eval_frames, "--optimizer", "sgd",
            "--lr", options.lr, "--scheduler", "steplr", "--lr_decay", options.lr_decay,
            "--test_interval", options.test_interval, "--nDataLoaderThread", 0, "--seed", seed,
            "--device", options.device]
    needs = plugins.load("loss", trainfunc).utterances_per_speaker
    if needs != IMBALANCED:         # the reference's group size (2-or-3 losses keep their own sampler)
        argv += ["--nPerSpeaker", max(PER_SPEAKER, needs)]
    return [str(arg) for arg in argv] + shlex.split(options.ours_args)


def final_veer(save_path: str) -> float:
    with open(os.path.join(save_path, "result", "scores.txt"), encoding="utf-8") as handle:
        lines = [line for line in handle if line.startswith("IT ") and VEER.search(line)]
    if not lines:
        raise RuntimeError(f"no evaluated epoch in {save_path}/result/scores.txt")
    return float(VEER.search(lines[-1]).group(1))


def train_ours(argv: list[str], save_path: str, run: str) -> float:
    """``trainSpeakerNet.main(argv)`` in this process; the final VEER."""
    code = trainSpeakerNet.main(argv)
    if code:
        raise RuntimeError(f"trainSpeakerNet exited with {code} ({run})")
    return final_veer(save_path)


def run_ours(options, paths: dict, seed: int, workdir: str) -> float:
    save_path = os.path.join(workdir, f"ours_seed{seed}")
    return train_ours(ours_argv(options, paths, seed, save_path), save_path, f"seed {seed}")


# ------------------------------------------------------------------------------------------------------------
# networks x losses: the sweep
# ------------------------------------------------------------------------------------------------------------

def sweep_settings(options, corpus_config: dict | None) -> dict:
    """What a run's VEER depends on besides (network, loss, seed): the corpus and the budget."""
    corpus = (os.path.abspath(options.corpus) if options.corpus
              else {"synthetic": {**SMALL_CORPUS, **(corpus_config or {})}})
    return {"corpus": corpus, **{name: getattr(options, name) for name in SETTINGS}}


def load_runs(path: str, settings: dict) -> list[dict]:
    """The runs already in the results file (none when there is none); a file of other settings is refused."""
    if not os.path.exists(path):
        return []
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as error:
        fail(f"{path}: not a bench_learning results file ({error})")
    if not (isinstance(data, dict) and isinstance(data.get("settings"), dict) and isinstance(data.get("runs"), list)):
        fail(f"{path}: not a bench_learning results file (no settings and runs)")
    for number, run in enumerate(data["runs"], 1):
        missing = sorted(RUN_KEYS - set(run)) if isinstance(run, dict) else sorted(RUN_KEYS)
        if missing:
            fail(f"{path}: run {number} lacks {', '.join(missing)}")
    # through JSON, as the file holds them: a tuple and its list compare equal
    settings = json.loads(json.dumps(settings))
    differ = [f"{key} {data['settings'].get(key)!r} there, {settings.get(key)!r} here"
              for key in sorted(settings.keys() | data["settings"].keys())
              if data["settings"].get(key) != settings.get(key)]
    if differ:
        fail(f"{path} holds runs of other settings ({'; '.join(differ)}): give another --results, or the same "
             f"settings to add to it")
    return data["runs"]


def save_runs(path: str, settings: dict, runs: list[dict]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic.write_text(path, json.dumps({"settings": settings, "runs": runs}, indent=1) + "\n", encoding="utf-8")


def check_network(options, paths: dict, network: str) -> int:
    """The parameters of ``network``'s embedding network as the sweep builds it; stops with status 2 where
    trainSpeakerNet would refuse a run of it with one of the losses, or where a crop is shorter than it takes."""
    for loss in options.losses:
        try:
            argv = ours_argv(options, paths, options.seeds[0], "unused", network, loss)
            spec = cli.training_spec(cli.parse_args(argv, raise_errors=True))
        except SpeakerNetError as error:
            fail(f"--networks {network} --losses {loss}: {error}")
    embedder = SpeakerNet(spec.model).__S__
    shortest = int(getattr(embedder, "min_samples", 0))
    crops = [("--max_frames", spec.data.max_frames)]
    if spec.evaluation.eval_frames:
        crops.append(("--eval_frames", spec.evaluation.eval_frames))
    for flag, frames in crops:
        if max_audio_samples(frames) < shortest:
            fewest = -(-(shortest - max_audio_samples(0)) // 160)
            fail(f"{network} takes crops of at least {shortest} samples; {flag} {frames} crops "
                 f"{max_audio_samples(frames)} ({flag} {fewest} or more, or leave {network} out)")
    return sum(parameter.numel() for parameter in embedder.parameters())


def sweep_rows(options, runs: dict, params: dict) -> list[dict]:
    rows = []
    for network in options.networks:
        for loss in options.losses:
            done = [runs[(network, loss, seed)] for seed in options.seeds]
            mean, spread = summary([run["veer"] for run in done])
            rows.append({"network": network, "loss": loss, "params": params[network],
                         "veer": [run["veer"] for run in done], "mean": mean, "spread": spread,
                         "seconds": statistics.fmean(run["seconds"] for run in done)})
    return rows


def sweep_table(seeds: list[int], rows: list[dict]) -> str:
    """One markdown table: a row per (network, loss)."""
    header = ["network", "loss", "params", *(f"VEER seed {seed}" for seed in seeds), "mean +- sd", "s per run"]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for row in rows:
        spread = "-" if math.isnan(row["spread"]) else f"{row['spread']:.2f}"
        cells = [row["network"], row["loss"], f"{row['params']:,}", *(f"{veer:.2f}" for veer in row["veer"]),
                 f"{row['mean']:.2f} +- {spread}", f"{row['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_sweep(options, settings: dict, corpus_config: dict | None) -> dict:
    """Every (network, loss, seed) not yet in ``--results`` trained and added to it; the table of them all."""
    runs = {(run["network"], run["loss"], run["seed"]): run for run in load_runs(options.results, settings)}
    with tempfile.TemporaryDirectory(prefix="bench_learning_") as workdir:
        paths = corpus_for(options.corpus, workdir, corpus_config)
        params = {network: check_network(options, paths, network) for network in options.networks}
        for network in options.networks:
            for loss in options.losses:
                for seed in options.seeds:
                    if (network, loss, seed) in runs:
                        continue
                    save_path = os.path.join(workdir, f"{network}_{loss}_seed{seed}")
                    start = time.perf_counter()
                    veer = train_ours(ours_argv(options, paths, seed, save_path, network, loss), save_path,
                                      f"{network} {loss} seed {seed}")
                    seconds = time.perf_counter() - start
                    runs[(network, loss, seed)] = {"network": network, "loss": loss, "seed": seed, "veer": veer,
                                                   "seconds": round(seconds, 1), "params": params[network]}
                    save_runs(options.results, settings, list(runs.values()))
                    print(f"{network} {loss} seed {seed}: VEER {veer:.4f} in {seconds:.0f} s")
    rows = sweep_rows(options, runs, params)
    table = sweep_table(options.seeds, rows)
    print("\n" + table)
    return {"settings": settings, "rows": rows, "table": table}


# ------------------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------------------

def summary(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def report(seeds: list[int], results: dict) -> dict:
    arms = [arm for arm in ("ours", "reference") if arm in results]
    print("\nseed  " + "  ".join(f"{arm + ' VEER':>14}" for arm in arms))
    for i, seed in enumerate(seeds):
        print(f"{seed:<4}  " + "  ".join(f"{results[arm][i]:14.4f}" for arm in arms))
    stats = {arm: summary(results[arm]) for arm in arms}
    for arm in arms:
        print(f"{arm:>9}: {stats[arm][0]:.4f} +- {stats[arm][1]:.4f} % VEER over {len(seeds)} seeds")
    out = {"seeds": seeds, **{arm: {"veer": results[arm], "mean": stats[arm][0], "spread": stats[arm][1]}
                              for arm in arms}}
    if len(arms) == 2:
        out["difference"] = stats["ours"][0] - stats["reference"][0]
        print(f"difference of the means (ours - reference): {out['difference']:+.4f} points")
    return out


def run_all(options, paths: dict, workdir: str) -> dict:
    results = {}
    for seed in options.seeds:
        if options.only in ("ours", "both"):
            results.setdefault("ours", []).append(run_ours(options, paths, seed, workdir))
        if options.only in ("reference", "both"):
            results.setdefault("reference", []).append(run_reference(options, paths, seed))
        print(f"seed {seed}: " + ", ".join(f"{arm} {values[-1]:.4f}" for arm, values in results.items()))
    return report(options.seeds, results)


def comma_list(cast):
    """An argparse type: ``1,2,3`` -> ``[cast("1"), cast("2"), cast("3")]``."""
    return lambda text: [cast(part) for part in text.split(",") if part]


def add_corpus_and_seeds(parser: argparse.ArgumentParser) -> None:
    """``--corpus`` and ``--seeds``, shared with ``bench_recipe.py``."""
    parser.add_argument("--corpus", default="", help="folder with train_list.txt, veri_test.txt, wav/ "
                                                     "(default: a small synthetic corpus in a temporary folder)")
    parser.add_argument("--seeds", type=comma_list(int), default=[1, 2, 3])


def corpus_for(corpus: str, workdir: str, corpus_config: dict | None) -> dict:
    """The paths of ``--corpus``, or of a small synthetic corpus made in ``workdir`` (``corpus_config`` overriding
    its fields)."""
    if corpus:
        return corpus_paths(corpus)
    return make_small_corpus(os.path.join(workdir, "corpus"), **(corpus_config or {}))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_corpus_and_seeds(parser)
    parser.add_argument("--trainfunc", default="mp_balance")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=24, help="speaker groups per batch")
    parser.add_argument("--max_frames", type=int, default=200)
    parser.add_argument("--eval_frames", type=int, default=300, help="0 = whole file")
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--lr_decay", type=float, default=0.95)
    parser.add_argument("--test_interval", type=int, default=1)
    parser.add_argument("--ours_args", default="", help="extra trainSpeakerNet flags for ours (one string)")
    parser.add_argument("--only", choices=["ours", "reference", "both"], default=None,
                        help="the arms (default both); --networks implies ours, and refuses reference or both")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--networks", type=comma_list(str), default=[],
                        help="sweep these networks (A,B,...), each at its own defaults, with our trainer only")
    parser.add_argument("--losses", type=comma_list(str), default=[],
                        help="the sweep's losses (X,Y,...; default --trainfunc); needs --networks")
    parser.add_argument("--results", default=RESULTS,
                        help="the sweep's JSON, added to after every run; its runs are not run again")
    return parser


def check_options(parser: argparse.ArgumentParser, options) -> None:
    """The combinations of flags; fills in the defaults that depend on others."""
    if not options.networks:
        if options.losses:
            parser.error("--losses needs --networks")
        options.only = options.only or "both"
        return
    if options.only not in (None, "ours"):
        parser.error(f"--networks runs our trainer only (the reference arm is {MODEL}'s): not with --only "
                     f"{options.only}")
    options.only = "ours"
    options.losses = options.losses or [options.trainfunc]
    chosen = {"--model", "--trainfunc"} & {flag.split("=")[0] for flag in shlex.split(options.ours_args)}
    if chosen:
        parser.error(f"--ours_args {' '.join(sorted(chosen))}: with --networks the networks and losses are "
                     f"--networks' and --losses'")


def main(argv=None, corpus_config: dict | None = None) -> dict:
    """Run the arms, or the sweep of ``--networks``; ``corpus_config`` overrides fields of the small synthetic
    corpus (without ``--corpus``)."""
    parser = build_parser()
    options = parser.parse_args(argv)
    check_options(parser, options)
    if options.networks:
        return run_sweep(options, sweep_settings(options, corpus_config), corpus_config)
    with tempfile.TemporaryDirectory(prefix="bench_learning_") as workdir:
        return run_all(options, corpus_for(options.corpus, workdir, corpus_config), workdir)


if __name__ == "__main__":
    main()
