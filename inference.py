#!/usr/bin/env python3
"""Use a trained model outside the trainer.

    python inference.py embed --initial_model M a.wav b.wav ... --out emb.npz    (or --list FILE --root DIR)
    python inference.py verify --initial_model M a.wav b.wav
    python inference.py average --save_path RUN --last 3           (or --epochs 8,9,10; --out FILE)

The checkpoint says which model it is (SpeakerNet's own carry their options; for the original's state dicts the
keys tell); model flags given here override it. Any sample rate is resampled to 16 kHz and stereo is mixed down.
"""

import argparse
import os
import sys

import torch

from core import checkpoints
from core.errors import SpeakerNetError
from core.evaluation import EmbeddingStore
from core.inference import load_embedder
from core.progress import progress_bar
from DatasetLoader import read_lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("embed", "one embedding per file, saved as .npz"),
                            ("verify", "the score of two files")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--initial_model", required=True, help="checkpoint (SpeakerNet's, the original's)")
        command.add_argument("--eval_frames", type=int, default=0,
                             help="0: whole files (default); N: the original's 10 crops of N frames")
        command.add_argument("--scoring", choices=["crops", "cosine"], default="crops")
        command.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
        command.add_argument("--trust_checkpoint", action="store_true",
                             help="load a checkpoint whose pickle holds other objects than tensors (RUNS its code)")
        for flag, kind in (("--model", str), ("--encoder_type", str), ("--nOut", int), ("--n_mels", int),
                           ("--window", str), ("--audio_scale", str), ("--pad", str), ("--trainfunc", str)):
            command.add_argument(flag, type=kind, default=None, help="override the checkpoint's own value")
    embed = commands.choices["embed"]
    embed.add_argument("files", nargs="*", help="audio files")
    embed.add_argument("--list", default="", help="a file of audio paths, one per line (relative to --root)")
    embed.add_argument("--root", default="", help="folder the --list paths are relative to")
    embed.add_argument("--out", required=True, help="the .npz to write: file name -> (crops, dim) embedding")
    verify = commands.choices["verify"]
    verify.add_argument("files", nargs=2, help="the two audio files")
    add_average_parser(commands)
    return parser


def add_average_parser(commands) -> None:
    average = commands.add_parser("average", help="a checkpoint whose weights are the mean of a run's epochs")
    average.add_argument("--save_path", required=True, help="the training run's folder (its epoch checkpoints in "
                                                            "model/)")
    chosen = average.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--last", type=int, help="average the newest N epoch checkpoints")
    chosen.add_argument("--epochs", help="average these epochs' checkpoints, e.g. 8,9,10")
    average.add_argument("--out", default="", help="the file to write (default: --save_path/model/"
                                                   "average_lastN.model or average_A_B_C.model)")
    average.add_argument("--trust_checkpoint", action="store_true",
                         help="read checkpoints whose pickle holds other objects than tensors (RUNS their code)")


def embedder_for(args):
    overrides = {key: getattr(args, key) for key in ("model", "encoder_type", "nOut", "n_mels", "window",
                                                      "audio_scale", "pad", "trainfunc")}
    return load_embedder(args.initial_model, device=args.device, trust=args.trust_checkpoint,
                         eval_frames=args.eval_frames, scoring=args.scoring, **overrides)


def files_to_embed(args) -> list[str]:
    files = list(args.files)
    if args.list:
        files += [os.path.join(args.root, line.strip()) for line in read_lines(args.list) if line.strip()]
    if not files:
        raise SpeakerNetError("embed: no audio given (files, or --list FILE)")
    return list(dict.fromkeys(files))


def run_embed(args) -> None:
    files = files_to_embed(args)
    embedder = embedder_for(args)
    embeddings = [embedder.embed(path) for path in progress_bar(files, desc="embedding", unit="file")]
    EmbeddingStore(files, torch.stack(embeddings)).save_npz(args.out)
    print(f"{len(files)} embeddings ({embeddings[0].shape[0]} x {embeddings[0].shape[1]}) written to {args.out}")


def run_verify(args) -> None:
    embedder = embedder_for(args)
    print(f"score {embedder.score(*args.files):.6f}")


def chosen_epochs(args, model_dir: str) -> tuple[list[str], str]:
    """The checkpoint paths ``--last`` or ``--epochs`` names (oldest first) and the default output name."""
    found = dict(checkpoints.epoch_checkpoints(model_dir))
    if args.last is not None:
        if args.last < 1:
            raise SpeakerNetError(f"--last {args.last}: must be at least 1")
        if len(found) < args.last:
            held = ", ".join(map(str, found)) or "none"
            raise SpeakerNetError(f"{model_dir}: --last {args.last} needs {args.last} epoch checkpoints, this run "
                                  f"holds {len(found)} (epochs: {held})")
        epochs = sorted(found)[-args.last:]
        return [found[epoch] for epoch in epochs], f"average_last{args.last}.model"
    try:
        epochs = [int(part) for part in args.epochs.split(",")]
    except ValueError:
        raise SpeakerNetError(f"--epochs {args.epochs!r}: expected epoch numbers separated by commas, "
                              f"e.g. 8,9,10") from None
    if len(set(epochs)) != len(epochs):
        raise SpeakerNetError(f"--epochs {args.epochs}: an epoch is named twice")
    epochs = sorted(epochs)
    missing = [checkpoints.checkpoint_path(model_dir, epoch) for epoch in epochs if epoch not in found]
    if missing:
        raise SpeakerNetError(f"{missing[0]}: epoch checkpoint not found (--epochs {args.epochs}; this run holds "
                              f"epochs {', '.join(map(str, found)) or 'none'})")
    return [found[epoch] for epoch in epochs], "average_" + "_".join(map(str, epochs)) + ".model"


def run_average(args) -> None:
    model_dir = os.path.join(args.save_path, "model")
    paths, name = chosen_epochs(args, model_dir)
    out = args.out or os.path.join(model_dir, name)
    checkpoints.save_averaged(out, checkpoints.average_checkpoints(paths, args.trust_checkpoint))
    print(f"{out}: the mean of {len(paths)} checkpoint(s): {', '.join(os.path.basename(path) for path in paths)}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        {"embed": run_embed, "verify": run_verify, "average": run_average}[args.command](args)
    except SpeakerNetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
