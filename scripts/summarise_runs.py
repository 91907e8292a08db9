#!/usr/bin/env python3
"""Summarise training runs from their ``result/scores.txt``: one table row per run folder.

    python scripts/summarise_runs.py SWEEP_DIR [NAME ...]
    python scripts/summarise_runs.py --plot --out runs.png SWEEP_DIR [NAME ...]

Each ``SWEEP_DIR/NAME`` is a ``trainSpeakerNet.py --save_path``. From its ``result/scores.txt`` (the original's
``IT %d, LR %f, TEER/T1 %2.2f, TLOSS %f, VEER %2.4f`` lines and the ``INFO epoch N: EER x, minDCF(p=P) y, ...``
lines) the table gives the VEER and minDCF of the last evaluated epoch and the best epoch: the one with the lowest
validation EER when the run had ``--val_list`` (its ``, val EER x`` in the INFO lines, as trainSpeakerNet.py
chooses its best checkpoint), else the one with the lowest VEER. A run with ``--average_epochs`` adds an
``average VEER`` column: the EER (of the first test list) on its last ``INFO average of epochs ...`` line, the mean
weights of its last epochs.
``exit_code.txt`` and ``wall_seconds.txt`` beside it (written by ``scripts/sweep_losses.sh``) give the status and
the wall time; a run with a non-zero exit code is shown as failed, with whatever epochs it logged. Without NAMEs,
every sub-folder of SWEEP_DIR is listed; ``--check`` exits 1 when one failed. Lines of an appended (resumed) log
replace earlier ones of the same epoch. ``--plot`` also draws the runs' VEER and training loss per epoch in one
picture, a line per run in each panel (``--out``, default ``SWEEP_DIR/summary.png``; the format from its suffix).
"""

import argparse
import math
import os
import re
import sys
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_NUMBER = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf))"
SCORE_RE = re.compile(rf"^IT (\d+), LR {_NUMBER}, TEER(?:/T1)? {_NUMBER}, TLOSS {_NUMBER}, VEER {_NUMBER}\s*$")
TRAIN_RE = re.compile(rf"^IT (\d+), LR {_NUMBER}, TEER(?:/T1)? {_NUMBER}, TLOSS {_NUMBER}\s*$")
INFO_RE = re.compile(r"^INFO epoch (\d+):(.*)$")
AVERAGE_RE = re.compile(rf"^INFO average of epochs [^(]*\(.*\): (?:\S+ )?EER {_NUMBER}")
DCF_RE = re.compile(rf"minDCF\(p=([^)]+)\) {_NUMBER}")
VAL_RE = re.compile(rf", val EER {_NUMBER}")


@dataclass
class Epoch:
    epoch: int
    lr: float
    train_accuracy: float
    train_loss: float
    veer: float | None = None
    min_dcf: dict = field(default_factory=dict)      # p_target (as written) -> value, in the order written
    val_eer: float | None = None                     # with --val_list: the EER that chose the best checkpoint


@dataclass
class RunSummary:
    name: str
    status: str = "not run"
    epochs: dict = field(default_factory=dict)       # epoch -> Epoch
    wall_seconds: float | None = None
    average_veer: float | None = None                # --average_epochs: the mean weights' EER

    @property
    def last_epoch(self) -> int | None:
        return max(self.epochs) if self.epochs else None

    @property
    def evaluated(self) -> list:
        return [self.epochs[e] for e in sorted(self.epochs) if self.epochs[e].veer is not None]

    @property
    def final(self) -> Epoch | None:
        evaluated = self.evaluated
        return evaluated[-1] if evaluated else None

    @property
    def best(self) -> Epoch | None:
        """The evaluated epoch with the lowest validation EER when every evaluation has one, else the lowest VEER
        (the earliest on ties; NaN never wins)."""
        evaluated = self.evaluated
        by_val = bool(evaluated) and all(e.val_eer is not None for e in evaluated)
        key = (lambda e: e.val_eer) if by_val else (lambda e: e.veer)
        candidates = [e for e in evaluated if not math.isnan(key(e))]
        return min(candidates, key=lambda e: (key(e), e.epoch)) if candidates else None

    @property
    def failed(self) -> bool:
        return self.status.startswith("failed")


def parse_scores(text: str) -> dict:
    """Epochs of a ``scores.txt``: ``{epoch: Epoch}``. Argument lines and anything unrecognised are skipped."""
    epochs: dict = {}
    for line in text.splitlines():
        line = line.strip()
        if match := SCORE_RE.match(line):
            it, lr, teer, tloss, veer = match.groups()
            epochs[int(it)] = Epoch(int(it), float(lr), float(teer), float(tloss), float(veer))
        elif match := TRAIN_RE.match(line):
            it, lr, teer, tloss = match.groups()
            epochs[int(it)] = Epoch(int(it), float(lr), float(teer), float(tloss))
        elif match := INFO_RE.match(line):
            epoch = epochs.get(int(match.group(1)))
            if epoch is not None:
                epoch.min_dcf = {p: float(value) for p, value in DCF_RE.findall(match.group(2))}
                if val := VAL_RE.search(match.group(2)):
                    epoch.val_eer = float(val.group(1))
    return epochs


def parse_average(text: str) -> float | None:
    """The EER of a ``scores.txt``'s last ``INFO average of epochs ...`` line (a longer run appends a newer one),
    or None."""
    found = [float(match.group(1)) for line in text.splitlines() if (match := AVERAGE_RE.match(line.strip()))]
    return found[-1] if found else None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def summarise_run(run_dir: str, name: str | None = None) -> RunSummary:
    summary = RunSummary(name or os.path.basename(os.path.normpath(run_dir)))
    scores = _read(os.path.join(run_dir, "result", "scores.txt"))
    if scores is not None:
        summary.epochs = parse_scores(scores)
        summary.average_veer = parse_average(scores)
    wall = _read(os.path.join(run_dir, "wall_seconds.txt"))
    try:
        summary.wall_seconds = float(wall) if wall is not None else None
    except ValueError:
        summary.wall_seconds = None
    code = _read(os.path.join(run_dir, "exit_code.txt"))
    if code is not None and code.strip() not in ("", "0"):
        summary.status = f"failed (exit {code.strip()})"
    elif summary.final is not None:
        summary.status = "ok"
    elif code is not None or scores is not None:
        summary.status = "no scores"
    return summary


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(runs: list) -> str:
    p_targets = {next(iter(r.final.min_dcf), None) for r in runs if r.final is not None and r.final.min_dcf}
    dcf_header = f"minDCF(p={p_targets.pop()})" if len(p_targets) == 1 else "minDCF"
    averaged = any(run.average_veer is not None for run in runs)    # the column only where a run has it
    header = ["loss", "status", "epochs", "final VEER", dcf_header, "best epoch", "best VEER",
              *(["average VEER"] if averaged else []), "wall s"]
    rows = []
    for run in runs:
        final, best = run.final, run.best
        dcf = next(iter(final.min_dcf.values()), None) if final is not None else None
        rows.append([run.name, run.status, _fmt(run.last_epoch, "d"),
                     _fmt(final.veer if final else None, ".4f"), _fmt(dcf, ".4f"),
                     _fmt(best.epoch if best else None, "d"), _fmt(best.veer if best else None, ".4f"),
                     *([_fmt(run.average_veer, ".4f")] if averaged else []), _fmt(run.wall_seconds, ".1f")])
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    align = ["<", "<"] + [">"] * (len(header) - 2)

    def line(cells):
        return "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(cells, align, widths)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(row) for row in rows])


def plot_runs(runs: list):
    """A matplotlib Figure of two panels, VEER of the evaluated epochs and training loss of every epoch, with a
    line per run that has such epochs (a Figure of its own: the global backend and pyplot's state are untouched)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(11, 4.5), layout="constrained")
    veer_axes, loss_axes = figure.subplots(1, 2)
    for run in runs:
        evaluated = run.evaluated
        if evaluated:
            veer_axes.plot([e.epoch for e in evaluated], [e.veer for e in evaluated], marker=".", label=run.name)
        epochs = [run.epochs[number] for number in sorted(run.epochs)]
        if epochs:
            loss_axes.plot([e.epoch for e in epochs], [e.train_loss for e in epochs], marker=".", label=run.name)
    for axes, title, unit in ((veer_axes, "VEER", "EER (%)"), (loss_axes, "training loss", "TLOSS")):
        axes.set(title=title, xlabel="epoch", ylabel=unit)
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if axes.get_lines():
            axes.legend(fontsize="small")
    return figure


def save_plot(runs: list, path: str) -> None:
    """:func:`plot_runs` written to ``path`` atomically, in the format its suffix names (PNG without one)."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from spknet.atomic import atomic_open

    extension = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    with atomic_open(path, "wb") as handle:
        plot_runs(runs).savefig(handle, format=extension, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir")
    parser.add_argument("names", nargs="*", help="run folders inside SWEEP_DIR (default: all)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a run failed")
    parser.add_argument("--plot", action="store_true", help="also draw VEER and training loss per epoch")
    parser.add_argument("--out", default=None, help="--plot: the picture (default SWEEP_DIR/summary.png)")
    args = parser.parse_args(argv)
    if args.out is not None and not args.plot:
        parser.error("--out names the --plot picture: add --plot")
    names = args.names
    if not names:
        if not os.path.isdir(args.sweep_dir):
            parser.error(f"{args.sweep_dir}: not a folder")
        names = sorted(n for n in os.listdir(args.sweep_dir) if os.path.isdir(os.path.join(args.sweep_dir, n)))
    runs = [summarise_run(os.path.join(args.sweep_dir, name), name) for name in names]
    print(format_table(runs))
    if args.plot:
        if not any(run.epochs for run in runs):
            print("error: --plot: no run has an epoch in its result/scores.txt", file=sys.stderr)
            return 2
        out = args.out or os.path.join(args.sweep_dir, "summary.png")
        try:
            save_plot(runs, out)
        except (OSError, ValueError) as error:      # a missing folder, an unknown format
            print(f"error: --out {out}: {error}", file=sys.stderr)
            return 2
        print(f"plot: {out}")
    return 1 if args.check and any(run.failed for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
