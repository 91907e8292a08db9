"""GPU training throughput of the original README's mp_balance command shape (200 speakers x 2 utterances x
350 frames, ResNetSE34L + SAP, 5994 classes), in float32 and in mixed precision (fp16 with a gradient scaler,
and bf16), next to the voxceleb_trainer-style step in float32. Runs on the CPU too with ``--groups``/``--frames``
scaled down (for checking the script, not for numbers).

    python -m benchmarks.bench_train_gpu
    python -m benchmarks.bench_train_gpu --device cpu --groups 4 --frames 50 --classes 100
"""

import argparse

import torch

from benchmarks.bench_train import measure


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--groups", type=int, default=200)
    parser.add_argument("--frames", type=int, default=350)
    parser.add_argument("--classes", type=int, default=5994)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda"):
        print(torch.cuda.get_device_name(), f"torch {torch.__version__}")
    print(f"mp_balance, {args.groups} x 2 x {args.frames} frames, {args.classes} classes, {args.steps} steps, "
          f"best of {args.repeats}")
    rows = []
    for precision in (None, "fp16", "bf16"):
        result = measure("mp_balance", args.groups, 2, args.frames, args.steps, args.repeats, args.device,
                         mixedprec=precision, reference=precision is None, classes=args.classes)
        rows.append((precision or "fp32", result["ours"]))
        if result["reference"]:
            rows.append(("fp32 voxceleb_trainer-style", result["reference"]))
    print(f"{'precision':<30}{'utt/s':>10}")
    for name, value in rows:
        print(f"{name:<30}{value:>10.1f}")


if __name__ == "__main__":
    main()
