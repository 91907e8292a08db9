"""Forward+backward time of the masked-proxy losses against a reference that works the way the original code does.

The reference (``reference_loss`` of ``benchmarks/reference_losses.py``) computes the same value as
``loss/_masked_proxy.py`` but builds it per step the way the original implementation does: one-hot targets from
scikit-learn on the CPU, absent classes from NumPy, a dense masked centre table, and the imbalanced batches regrouped
by label in Python.

Both run in the same process on the same inputs and parameters, interleaved step by step; the table gives the
median and the fastest time of one forward+backward step (the fastest is the least disturbed on a shared machine),
the ratios reference/ours, and the largest absolute differences of the loss value and of the gradients. On CUDA
our loss is also run once under ``torch.cuda.set_sync_debug_mode("error")``: any host synchronisation inside the
loss (forward or backward) raises, and the ``sync`` column reports it.

    python -m benchmarks.bench_losses --device cpu --repeats 20
"""

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmarks.reference_losses import reference_loss
from spknet import plugins
from spknet.loss._common import IMBALANCED

LOSSES = ("mp", "mmp", "mp_balance", "mmp_balance", "mmp_balance2")


# ---- inputs ------------------------------------------------------------------------------------------------------

def make_loss(name: str, classes: int, dim: int, device, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return plugins.load("loss", name)(nOut=dim, nSpeakers=classes).to(device)


def make_inputs(imbalanced: bool, batch: int, classes: int, dim: int, device, seed: int = 0):
    """``batch`` groups of distinct classes with L2-normalised embeddings (a leaf that requires grad).

    Balanced: ``x`` is ``(batch, 2, dim)`` and ``label`` ``(batch,)``. Imbalanced: groups of 2 or 3 utterances,
    concatenated group by group as the loader does, so ``x`` is ``(utterances, dim)`` with per-utterance labels.
    """
    if batch > classes:
        raise ValueError(f"--batch {batch} groups need at least as many classes (got --classes {classes})")
    generator = torch.Generator().manual_seed(seed)
    groups = torch.randperm(classes, generator=generator)[:batch]
    if imbalanced:
        sizes = torch.randint(2, 4, (batch,), generator=generator)
        label = groups.repeat_interleave(sizes)
        x = torch.randn(len(label), dim, generator=generator)
    else:
        label = groups
        x = torch.randn(batch, 2, dim, generator=generator)
    x = F.normalize(x, dim=-1).to(device).requires_grad_(True)
    return x, label.to(device)


def ours(module, x, label):
    return module(x, label)


# ---- measurement -------------------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(fn, module, x, label):
    module.zero_grad(set_to_none=True)
    x.grad = None
    loss, accuracy = fn(module, x, label)
    loss.backward()
    return loss.detach(), accuracy.detach(), x.grad.clone(), module.proxies.grad.clone()


def compare(module, x, label) -> dict:
    """Largest absolute differences between ours and the reference (loss, accuracy, gradients)."""
    mine = _step(ours, module, x, label)
    theirs = _step(reference_loss, module, x, label)
    diff = [float((a.to(torch.float64) - b.to(torch.float64)).abs().max()) for a, b in zip(mine, theirs)]
    return {"loss": float(mine[0]), "reference_loss": float(theirs[0]), "loss_diff": diff[0],
            "accuracy_diff": diff[1], "x_grad_diff": diff[2], "proxy_grad_diff": diff[3]}


def check_no_sync(module, x, label) -> str:
    """Run our loss (forward+backward) with CUDA sync debugging set to error: 'none' or the error raised."""
    module.zero_grad(set_to_none=True)
    x.grad = None
    torch.cuda.synchronize(x.device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss, _ = module(x, label)
        loss.backward()
    except RuntimeError as error:
        return "SYNC: " + " ".join(str(error).split())[:120]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize(x.device)
    return "none"


def time_both(module, x, label, repeats: int, warmup: int, device) -> dict:
    """Milliseconds per forward+backward step, ours and reference, interleaved step by step so that background
    load on a shared machine hits both alike: ``{"ours": [...], "reference": [...]}``."""
    for _ in range(warmup):
        _step(ours, module, x, label)
        _step(reference_loss, module, x, label)
    times = {"ours": [], "reference": []}
    for _ in range(repeats):
        for key, fn in (("ours", ours), ("reference", reference_loss)):
            _sync(device)
            started = time.perf_counter()
            module.zero_grad(set_to_none=True)
            x.grad = None
            loss, _ = fn(module, x, label)
            loss.backward()
            _sync(device)
            times[key].append((time.perf_counter() - started) * 1000.0)
    return times


@dataclass
class Row:
    loss: str
    batch: str
    ours_ms: float              # median
    reference_ms: float         # median
    ours_min_ms: float
    reference_min_ms: float
    loss_diff: float
    grad_diff: float
    sync: str

    @property
    def ratio(self) -> float:
        """reference / ours, on the medians."""
        return self.reference_ms / self.ours_ms if self.ours_ms > 0 else float("inf")

    @property
    def ratio_min(self) -> float:
        """reference / ours, on the fastest steps (the least disturbed by other work on the machine)."""
        return self.reference_min_ms / self.ours_min_ms if self.ours_min_ms > 0 else float("inf")


def benchmark(names=LOSSES, device="cpu", batch=200, classes=5994, dim=512, repeats=20, warmup=3, seed=0,
              timing=True) -> list[Row]:
    device = torch.device(device)
    rows = []
    for name in names:
        module = make_loss(name, classes, dim, device, seed)
        imbalanced = module.utterances_per_speaker == IMBALANCED
        x, label = make_inputs(imbalanced, batch, classes, dim, device, seed)
        diffs = compare(module, x, label)
        times = {"ours": [float("nan")], "reference": [float("nan")]}
        if timing:
            times = time_both(module, x, label, repeats, warmup, device)
        sync = check_no_sync(module, x, label) if device.type == "cuda" else "n/a (cpu)"
        shape = f"imbalanced, {x.shape[0]} utt" if imbalanced else f"balanced, {batch}x{x.shape[1]}"
        rows.append(Row(name, shape, statistics.median(times["ours"]), statistics.median(times["reference"]),
                        min(times["ours"]), min(times["reference"]), diffs["loss_diff"],
                        max(diffs["x_grad_diff"], diffs["proxy_grad_diff"]), sync))
    return rows


def describe_device(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)}), torch {torch.__version__}"
    return f"cpu ({torch.get_num_threads()} threads), torch {torch.__version__}"


def format_table(rows: list[Row]) -> str:
    header = (f"{'loss':<13} {'batch':<21} {'ours ms':>8} {'ref ms':>8} {'ratio':>6}  {'ours min':>8} {'ref min':>8} "
              f"{'ratio':>6}  {'|dloss|':>8} {'|dgrad|':>8}  sync")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.loss:<13} {r.batch:<21} {r.ours_ms:8.1f} {r.reference_ms:8.1f} {r.ratio:5.2f}x  "
                     f"{r.ours_min_ms:8.1f} {r.reference_min_ms:8.1f} {r.ratio_min:5.2f}x  "
                     f"{r.loss_diff:8.1e} {r.grad_diff:8.1e}  {r.sync}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per loss and implementation (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--classes", type=int, default=5994)
    parser.add_argument("--batch", type=int, default=200, help="speaker groups per batch")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    print(f"device: {describe_device(args.device)}")
    print(f"B={args.batch} groups, C={args.classes}, D={args.dim}; median of {args.repeats} forward+backward steps "
          f"after {args.warmup} warm-up (columns 3-5: median; 6-8: fastest step); ratio = reference / ours")
    rows = benchmark(args.losses, args.device, args.batch, args.classes, args.dim, args.repeats, args.warmup)
    print(format_table(rows))
    target = 10.0 if args.device == "cuda" else 1.5
    slow = [r.loss for r in rows if min(r.ratio, r.ratio_min) < target]
    print(f"target >= {target:g}x: " + (f"below for {', '.join(slow)}" if slow else "met for every loss"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
