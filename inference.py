#!/usr/bin/env python3
"""Use a trained model outside the trainer.

    python inference.py embed --initial_model M a.wav b.wav ... --out emb.npz    (or --list FILE --root DIR)
    python inference.py verify --initial_model M a.wav b.wav
    python inference.py export --initial_model M --format onnx|torch_export --out model.onnx|model.pt2

The checkpoint says which model it is (SpeakerNet's own carry their options; for the original's state dicts the
keys tell); model flags given here override it. Any sample rate is resampled to 16 kHz and stereo is mixed down.
"""

import argparse
import os
import sys

import torch

from core.errors import SpeakerNetError
from core.evaluation import EmbeddingStore
from core.export import FORMATS, export_model
from core.inference import load_embedder
from DatasetLoader import read_lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("embed", "one embedding per file, saved as .npz"),
                            ("verify", "the score of two files"),
                            ("export", "the network, waveform to embedding, as ONNX or a torch.export program")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--initial_model", required=True, help="checkpoint (SpeakerNet's, the original's)")
        command.add_argument("--trust_checkpoint", action="store_true",
                             help="load a checkpoint whose pickle holds other objects than tensors (RUNS its code)")
        for flag, kind in (("--model", str), ("--encoder_type", str), ("--nOut", int), ("--n_mels", int),
                           ("--window", str), ("--audio_scale", str), ("--pad", str), ("--trainfunc", str)):
            command.add_argument(flag, type=kind, default=None, help="override the checkpoint's own value")
        if name == "export":
            continue
        command.add_argument("--eval_frames", type=int, default=0,
                             help="0: whole files (default); N: the original's 10 crops of N frames")
        command.add_argument("--scoring", choices=["crops", "cosine"], default="crops")
        command.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    embed = commands.choices["embed"]
    embed.add_argument("files", nargs="*", help="audio files")
    embed.add_argument("--list", default="", help="a file of audio paths, one per line (relative to --root)")
    embed.add_argument("--root", default="", help="folder the --list paths are relative to")
    embed.add_argument("--out", required=True, help="the .npz to write: file name -> (crops, dim) embedding")
    embed.add_argument("--batch_size", type=int, default=None,
                       help="files per forward pass (default: as --eval batches them on this device)")
    verify = commands.choices["verify"]
    verify.add_argument("files", nargs=2, help="the two audio files")
    export = commands.choices["export"]
    export.add_argument("--format", required=True, choices=FORMATS,
                        help="onnx (onnxruntime) or torch_export (a .pt2 for torch.export.load)")
    export.add_argument("--out", required=True, help="the file to write (.onnx or .pt2)")
    return parser


def embedder_for(args):
    overrides = {key: getattr(args, key) for key in ("model", "encoder_type", "nOut", "n_mels", "window",
                                                      "audio_scale", "pad", "trainfunc")}
    options = {"device": "cpu"} if args.command == "export" else {
        "device": args.device, "eval_frames": args.eval_frames, "scoring": args.scoring}
    return load_embedder(args.initial_model, trust=args.trust_checkpoint, **options, **overrides)


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
    if args.batch_size is not None and args.batch_size < 1:
        raise SpeakerNetError(f"embed: --batch_size {args.batch_size}: give 1 or more files per forward pass")
    embeddings = embedder.embed_files(files, args.batch_size, show_progress=True)
    EmbeddingStore(files, torch.stack(embeddings)).save_npz(args.out)
    print(f"{len(files)} embeddings ({embeddings[0].shape[0]} x {embeddings[0].shape[1]}) written to {args.out}")


def run_verify(args) -> None:
    embedder = embedder_for(args)
    print(f"score {embedder.score(*args.files):.6f}")


def run_export(args) -> None:
    embedder = embedder_for(args)
    info = export_model(embedder.network, embedder.config, args.out, args.format, embedder.test_normalize)
    print(f"{args.format} export of {args.initial_model} (embedding dim {info['embedding_dim']}, test_normalize "
          f"{info['test_normalize']}, input float32 (batch, samples) in [-1, 1] at 16 kHz) written to {args.out}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        {"embed": run_embed, "verify": run_verify, "export": run_export}[args.command](args)
    except SpeakerNetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
