"""Embedding files outside the trainer: files/s of ``inference.py embed`` next to ``--eval``'s extraction and
onnxruntime, on the same synthetic files, in one process.

``--files`` random-noise wav files (16 kHz, int16 PCM) cycling through ``--lengths`` seconds, so that files of equal
length can share a forward pass, are written to a temporary folder with the checkpoint of a random ResNetSE34L
(``--encoder``, ``--nOut``; the original's int16-scale input). Whole files (``eval_frames`` 0) are embedded by:

* ``inference.py embed``: :meth:`spknet.inference.Embedder.embed_files`, the library path the command uses (each file
  read once, equal lengths batched);
* ``per-file embed``: :meth:`~spknet.inference.Embedder.embed` once per file, what the command did before;
* ``--eval extraction``: :func:`spknet.evaluation.embed_files` (DataLoader, equal-length batches, the folded CPU copy
  of the network, one forward thread per core);
* ``onnxruntime``: the model exported by :func:`spknet.export.export_model` (the export time is printed too), files
  read with soundfile and batched by equal length as ``--eval`` batches them, ``--threads`` intra-op threads.

Every arm runs ``--rounds`` times, alternating; the table gives each arm's best round (the least disturbed on a
shared machine) in files/s, its ratio to ``inference.py embed``, and the largest cosine distance of its
embeddings to that arm's.

``--rtf all`` (or ``--rtf NAME,...``) measures instead the real-time factor of each network plugin at its own
defaults (:func:`real_time_factors`): seconds of compute per second of audio for one 5-s waveform (WeSpeaker's
``SamplesPerChunk`` 80000, on which it publishes its single-thread RTFs), front end included, through the copy of
the network that ``--eval`` and ``inference.py`` run on a CPU (BatchNorms folded, channels-last), under
``torch.inference_mode``, ``--threads`` (default 1) intra-op threads, the best of ``--rounds`` passes after one
warm-up; WeSpeaker's published figures (:data:`WESPEAKER_RTF`) are printed beside ours.

    python -m benchmarks.bench_inference                     # 48 files of 2, 3 and 4 s
    python -m benchmarks.bench_inference --files 200 --lengths 1.5,2,2.5,3,6 --rounds 5
    python -m benchmarks.bench_inference --rtf all           # one thread, every network
"""

import argparse
import os
import tempfile
import time

import numpy as np
import soundfile as sf
import torch

from spknet import SAMPLE_RATE
from spknet.data import NUM_EVAL, max_audio_samples
from spknet.errors import SpeakerNetError
from spknet.evaluation import embed_files, equal_length_batches
from spknet.evaluation.extraction import cpu_inference_model
from spknet.export import export_model
from spknet.inference import load_embedder
from spknet.model import SpeakerNet

# WeSpeaker's single-thread RTFs (runtime/onnxruntime/README.md: onnxruntime, num_threads 1, SamplesPerChunk 80000,
# an Intel Xeon Platinum 8160 at 2.10 GHz), by our network names at the same configurations.
WESPEAKER_RTF = {"ECAPA_TDNN": 0.018, "ResNet34": 0.061, "ResNet152": 0.179, "ResNet221": 0.268,
                 "ResNet293": 0.364, "CAMPPlus": 0.023, "ECAPA_TDNN_GLOB_c512": 0.018, "ECAPA_TDNN_GLOB_c1024": 0.042}
RTF_SECONDS = 5.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=48)
    parser.add_argument("--lengths", default="2,3,4", help="seconds, comma-separated; the files cycle through them")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="compute threads (default: torch's)")
    parser.add_argument("--encoder", choices=["SAP", "ASP"], default="SAP")
    parser.add_argument("--nOut", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rtf", default="",
                        help="comma-separated networks, or 'all': their real-time factors instead of the file paths")
    args = parser.parse_args(argv)
    if args.rtf:
        from benchmarks.bench_train import network_names
        try:
            args.rtf = network_names(args.rtf)
        except SpeakerNetError as error:
            parser.error(str(error))
    return args


def real_time_factors(names: list[str], seconds: float = RTF_SECONDS, rounds: int = 3, seed: int = 0) -> dict:
    """Seconds of compute per second of audio of each network (its own defaults, random weights) on one waveform
    of ``seconds``, through its CPU inference copy, with the caller's thread count; the best of ``rounds`` passes
    after a warm-up."""
    from benchmarks.bench_train import embedder

    wave = torch.randn(1, int(seconds * SAMPLE_RATE), generator=torch.Generator().manual_seed(seed)) * 3000
    factors = {}
    for name in names:
        torch.manual_seed(seed)
        network = cpu_inference_model(embedder(name))
        best = float("inf")
        with torch.inference_mode():
            network(wave)
            for _ in range(rounds):
                started = time.perf_counter()
                network(wave)
                best = min(best, time.perf_counter() - started)
        factors[name] = best / seconds
    return factors


def print_real_time_factors(factors: dict, threads: int) -> None:
    print(f"real-time factor: one {RTF_SECONDS:g}-s waveform, {threads} thread(s), front end included; "
          "WeSpeaker's: onnxruntime, one thread, Xeon Platinum 8160")
    print(f"{'network':<22}{'RTF':>9}{'WeSpeaker':>11}")
    for name, factor in factors.items():
        published = f"{WESPEAKER_RTF[name]:.3f}" if name in WESPEAKER_RTF else "-"
        print(f"{name:<22}{factor:>9.4f}{published:>11}")


def write_files(folder: str, count: int, lengths: list[float], seed: int) -> list[str]:
    """``count`` int16 wav files of noise in ``folder``, cycling through ``lengths`` seconds; their names."""
    rng = np.random.default_rng(seed)
    names = []
    for index in range(count):
        samples = int(lengths[index % len(lengths)] * SAMPLE_RATE)
        names.append(f"file{index:05d}.wav")
        audio = (rng.standard_normal(samples) * 3000).clip(-32768, 32767).astype(np.int16)
        sf.write(os.path.join(folder, names[-1]), audio, SAMPLE_RATE, subtype="PCM_16")
    return names


def save_random_model(folder: str, encoder: str, n_out: int, seed: int) -> str:
    """A random ResNetSE34L as the original's flat state dict (the keys tell the model; int16-scale input)."""
    torch.manual_seed(seed)
    path = os.path.join(folder, "random.model")
    torch.save(SpeakerNet.build("ResNetSE34L", nOut=n_out, encoder_type=encoder, with_loss=False).state_dict(), path)
    return path


def onnx_runner(path: str, threads: int):
    """Embeddings of files (full paths) through onnxruntime: read with soundfile, equal lengths batched as
    ``--eval`` batches whole files on the CPU."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def run(paths: list[str]) -> torch.Tensor:
        lengths = [sf.info(path).frames for path in paths]
        out = None
        for batch in equal_length_batches(lengths, NUM_EVAL, NUM_EVAL * max_audio_samples(400)):
            waves = np.stack([sf.read(paths[index], dtype="float32")[0] for index in batch])
            embeddings = session.run(["embedding"], {"waveform": waves})[0]
            if out is None:
                out = np.empty((len(paths), embeddings.shape[1]), dtype=np.float32)
            out[batch] = embeddings
        return torch.from_numpy(out)
    return run


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(1 - torch.nn.functional.cosine_similarity(a.reshape(len(a), -1), b.reshape(len(b), -1)).min())


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.rtf:
        torch.set_num_threads(args.threads or 1)
        factors = real_time_factors(args.rtf, rounds=args.rounds, seed=args.seed)
        print_real_time_factors(factors, args.threads or 1)
        return {"threads": args.threads or 1, "rtf": factors}
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    lengths = [float(value) for value in args.lengths.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as folder:
        names = write_files(folder, args.files, lengths, args.seed)
        paths = [os.path.join(folder, name) for name in names]
        embedder = load_embedder(save_random_model(folder, args.encoder, args.nOut, args.seed), device="cpu")
        started = time.perf_counter()
        export_model(embedder.network, embedder.config, os.path.join(folder, "model.onnx"), "onnx",
                     embedder.test_normalize)
        export_seconds = time.perf_counter() - started
        run_onnx = onnx_runner(os.path.join(folder, "model.onnx"), threads)
        arms = {
            "inference.py embed": lambda: torch.stack(embedder.embed_files(paths))[:, 0],
            "per-file embed": lambda: torch.stack([embedder.embed(path) for path in paths])[:, 0],
            "--eval extraction": lambda: embed_files(embedder.network, names, folder, 0, torch.device("cpu"),
                                                     show_progress=False, threads=threads)[:, 0],
            "onnxruntime": lambda: run_onnx(paths),
        }
        print(f"{args.files} files of {args.lengths} s, ResNetSE34L {args.encoder} nOut {args.nOut} (random), "
              f"{threads} threads; ONNX export {export_seconds:.1f} s", flush=True)
        best, embeddings = {name: float("inf") for name in arms}, {}
        for _ in range(args.rounds):
            for name, arm in arms.items():
                started = time.perf_counter()
                embeddings[name] = arm()
                best[name] = min(best[name], time.perf_counter() - started)
    reference = "inference.py embed"
    result = {"files": args.files, "threads": threads, "export_seconds": export_seconds, "arms": {}}
    print(f"{'path':<20} {'files/s':>9} {'x embed':>8} {'cos. distance':>14}")
    for name in arms:
        rate = args.files / best[name]
        distance = cosine_distance(embeddings[name], embeddings[reference])
        result["arms"][name] = {"files_per_s": rate, "ratio": best[reference] / best[name],
                                "cosine_distance": distance}
        print(f"{name:<20} {rate:9.1f} {best[reference] / best[name]:8.2f} {distance:14.1e}")
    return result


if __name__ == "__main__":
    main()
