"""Evaluation at VoxCeleb scale: trial scoring and embedding extraction, ours against the original's loops.

(a) **Scoring.** ``--trials`` random trials (default 581,480, the size of VoxCeleb1-E) between ``--files`` files
(default 145,160) of ``--crops`` x ``--dim`` L2-normalised random crop embeddings (float32; the default size takes
3 GB). Ours is :func:`evaluation.crop_scores` (grouped batched products); the original scores one trial at a time
in Python (one ``F.pairwise_distance`` over the expanded 10 x 10 crop pairs, :func:`evaluation.reference_crop_scores`),
timed on ``--loop_trials`` trials and extrapolated to all of them. The crop norms are computed once per embedding
store (at extraction); they are timed separately. The table also gives the largest difference of the two on the
subsample and the time of ``--scoring cosine``.

(b) **Extraction.** ``--extract_files`` synthetic wav files of ``--extract_seconds`` s (written to a temporary
folder), embedded with ResNetSE34L (random weights) from ``--eval_frames`` crops: ours is
:func:`evaluation.extract_embeddings` (DataLoader, ``--eval_batch_size`` files per forward pass, the folded CPU
copy of the network) once per ``--precisions`` value (``fp32``: the default; ``bf16``: ``--eval_precision bf16``);
the original loads a file, runs its crops through the network, and goes on to the next. All run ``--rounds``
times, alternating, in this process; the table gives the best round of each (the least disturbed on a shared
machine), the ratio of the medians, and how far each is from the original's embeddings.

    python -m benchmarks.bench_eval                         # both, full size
    python -m benchmarks.bench_eval --files 20000 --trials 80000 --skip_extraction
"""

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import soundfile as sf
import torch

from benchmarks.reference_scoring import reference_crop_scores
from spknet.data import load_wav
from spknet.evaluation import (
    available_cores,
    cosine_scores,
    cpu_has_native_bf16,
    crop_norms,
    crop_scores,
    extract_embeddings,
    mean_embeddings,
)


def random_embeddings(files: int, crops: int, dim: int, seed: int = 0) -> torch.Tensor:
    """L2-normalised random crop embeddings, generated in chunks (no second full-size temporary)."""
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty(files, crops, dim)
    for start in range(0, files, 8192):
        block = out[start:start + 8192]
        block.normal_(generator=generator)
        block.div_(torch.linalg.vector_norm(block, dim=2, keepdim=True))
    return out


def bench_scoring(args) -> dict:
    print(f"(a) scoring {args.trials} trials between {args.files} files of {args.crops} x {args.dim} crops "
          f"({args.files * args.crops * args.dim * 4 / 1e9:.2f} GB), {torch.get_num_threads()} threads", flush=True)
    embeddings = random_embeddings(args.files, args.crops, args.dim, args.seed)
    generator = torch.Generator().manual_seed(args.seed + 1)
    enroll = torch.randint(0, args.files, (args.trials,), generator=generator)
    test = torch.randint(0, args.files, (args.trials,), generator=generator)

    started = time.perf_counter()
    norms = crop_norms(embeddings)
    norms_seconds = time.perf_counter() - started
    ours_runs, ours_cpu = [], []
    for _ in range(args.repeats):
        started, cpu = time.perf_counter(), _cpu_seconds()
        scores = crop_scores(embeddings, enroll, test, normalize=True, norms=norms, chunk=args.chunk,
                             threads=args.threads)
        ours_runs.append(time.perf_counter() - started)
        ours_cpu.append(_cpu_seconds() - cpu)
    ours = min(ours_runs)

    started = time.perf_counter()
    means = mean_embeddings(embeddings, normalize=True, norms=norms)
    cosine_scores(means, enroll, test)
    cosine = time.perf_counter() - started

    sample = min(args.loop_trials, args.trials)
    started, cpu = time.perf_counter(), _cpu_seconds()
    reference = reference_crop_scores(embeddings, enroll[:sample], test[:sample], normalize=True)
    loop_sample = time.perf_counter() - started
    loop_cpu = (_cpu_seconds() - cpu) * args.trials / sample
    loop = loop_sample * args.trials / sample
    difference = float(np.abs(reference - scores[:sample].numpy()).max())
    best = int(np.argmin(ours_runs))
    rows = [
        ("crop norms (once per store)", f"{norms_seconds:.2f}", "", ""),
        ("ours: crops scoring", f"{ours:.2f}", f"{ours_cpu[best]:.2f}",
         f"runs {', '.join(f'{r:.2f}' for r in ours_runs)}"),
        ("ours: cosine scoring (incl. means)", f"{cosine:.2f}", "", ""),
        (f"original loop ({sample} trials)", f"{loop_sample:.2f}", "", ""),
        ("original loop, extrapolated", f"{loop:.1f}", f"{loop_cpu:.1f}", f"{loop / ours:.0f}x ours"),
        ("max |ours - loop| on the sample", f"{difference:.2e}", "", ""),
    ]
    _table(["scoring", "wall s", "CPU s", "note"], rows)
    _load()
    return {"ours": ours, "ours_cpu": ours_cpu[best], "loop": loop, "loop_cpu": loop_cpu, "ratio": loop / ours,
            "difference": difference, "norms": norms_seconds, "cosine": cosine}


def write_wavs(folder: str, count: int, seconds: float, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    names = []
    for i in range(count):
        name = f"spk{i % 8:02d}/utt{i:04d}.wav"
        os.makedirs(os.path.join(folder, os.path.dirname(name)), exist_ok=True)
        samples = int(seconds * 16000)
        tone = np.sin(2 * np.pi * rng.uniform(100, 300) * np.arange(samples) / 16000)
        audio = 0.3 * tone * rng.uniform(0.2, 1.0, samples // 1600 + 1).repeat(1600)[:samples] \
            + 0.05 * rng.standard_normal(samples)
        sf.write(os.path.join(folder, name), audio.astype(np.float32), 16000, subtype="PCM_16")
        names.append(name)
    return names


@torch.no_grad()
def original_extraction(model, files, root, eval_frames) -> torch.Tensor:
    """The original's evaluation loop: load one file's crops, forward them, next file."""
    out = []
    for name in files:
        crops = torch.from_numpy(load_wav(os.path.join(root, name), eval_frames))
        out.append(model(crops).float())
    return torch.stack(out)


def bench_extraction(args) -> dict:
    from spknet.model import SpeakerNet
    torch.manual_seed(args.seed)
    model = SpeakerNet.build("ResNetSE34L", nOut=512).__S__.eval()
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    print(f"(b) extraction: {args.extract_files} files of {args.extract_seconds:g} s, {args.eval_frames}-frame crops, "
          f"ResNetSE34L, {torch.get_num_threads()} threads, {available_cores()} cores, {args.workers} loader "
          f"worker(s) asked for, {args.eval_batch_size or 'default'} files per forward pass; native bfloat16 on "
          f"this CPU: {'yes' if cpu_has_native_bf16() else 'no'}", flush=True)
    def ours(precision):
        return lambda: extract_embeddings(model, files, root, args.eval_frames, "cpu", num_workers=args.workers,
                                          files_per_batch=args.eval_batch_size, show_progress=False,
                                          precision=precision)

    runs = {"original": lambda: original_extraction(model, files, root, args.eval_frames)}
    runs.update({f"ours {precision}": ours(precision) for precision in precisions})
    times = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    embeddings = {}
    with tempfile.TemporaryDirectory() as root:
        files = write_wavs(root, args.extract_files, args.extract_seconds, args.seed)
        original_extraction(model, files[:2], root, args.eval_frames)          # warm-up
        for _ in range(args.rounds):
            for name, run in runs.items():
                started, used = time.perf_counter(), _cpu_seconds()
                embeddings[name] = run()
                times[name].append(time.perf_counter() - started)
                cpu[name].append(_cpu_seconds() - used)
    reference = embeddings["original"]
    best = {name: min(values) for name, values in times.items()}
    best_cpu = {name: min(values) for name, values in cpu.items()}
    rows, result = [], {}
    for name in runs:
        speedup = best["original"] / best[name]
        median = statistics.median(times["original"]) / statistics.median(times[name])
        cosine = torch.nn.functional.cosine_similarity(embeddings[name], reference, dim=-1).min()
        difference = float((embeddings[name] - reference).abs().max() / reference.abs().max())
        rows.append((name, f"{best[name]:.2f}", f"{args.extract_files / best[name]:.2f}", f"{best_cpu[name]:.2f}",
                     f"{speedup:.2f}x", f"{median:.2f}x", f"{difference:.1e}", f"{float(cosine):.6f}",
                     ", ".join(f"{t:.2f}" for t in times[name])))
        result[name] = {"seconds": best[name], "speedup": speedup, "median_speedup": median,
                        "difference": difference, "min_cosine": float(cosine)}
    _table(["extraction", "best s", "files/s", "CPU s", "speed-up", "median speed-up", "max rel. diff",
            "min cosine", "rounds (s)"], rows)
    _load()
    return result


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the loader workers)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _load() -> None:
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (others' work on this machine slows the "
          f"wall times; CPU s is this process's and its loader workers')\n", flush=True)


def _table(header, rows) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--files", type=int, default=145160, help="(a) files with embeddings")
    add("--trials", type=int, default=581480, help="(a) trials")
    add("--crops", type=int, default=10)
    add("--dim", type=int, default=512)
    add("--loop_trials", type=int, default=2000, help="(a) trials timed with the original's loop")
    add("--repeats", type=int, default=2, help="(a) runs of ours (the best is reported)")
    add("--chunk", type=int, default=None, help="(a) trials per batched product (default: evaluation's)")
    add("--threads", type=int, default=None, help="torch threads (default: torch's)")
    add("--extract_files", type=int, default=64, help="(b) wav files")
    add("--extract_seconds", type=float, default=6.0, help="(b) seconds per file")
    add("--eval_frames", type=int, default=400, help="(b) crop length in frames (400 = 4 s)")
    add("--workers", type=int, default=1,
        help="(b) loader workers of ours (on the CPU, only those the forward threads leave a core for)")
    add("--eval_batch_size", type=int, default=None, help="(b) files per forward pass of ours (default: evaluation's)")
    add("--precisions", default="fp32,bf16", help="(b) --eval_precision values of ours, comma-separated")
    add("--rounds", type=int, default=3, help="(b) alternating rounds of each")
    add("--skip_scoring", action="store_true")
    add("--skip_extraction", action="store_true")
    add("--seed", type=int, default=0)
    return parser


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    if not args.skip_scoring:
        results["scoring"] = bench_scoring(args)
    if not args.skip_extraction:
        results["extraction"] = bench_extraction(args)
    return results


if __name__ == "__main__":
    main()
