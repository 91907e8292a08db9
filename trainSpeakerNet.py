#!/usr/bin/env python3
"""SpeakerNet command line: train a speaker-verification model, or evaluate one with ``--eval``.

Flags and defaults are the original's (see README); ``--config FILE.yaml`` and ``--preset`` set defaults that
explicit flags override. This is the edge: :mod:`spknet.cli` turns the flags into the typed specs of
:mod:`spknet.specs`, checked once, and the library (:func:`spknet.training.train`, :mod:`spknet.evaluation.runner`)
gets the specs.
"""

import os
import sys

import torch

from spknet import cli, distributed, logs
from spknet.checkpoints import UnsafeCheckpoint
from spknet.cli import build_parser, parse_args, spec_from_argv
from spknet.errors import SpeakerNetError, worker_message
from spknet.evaluation.runner import checkpoint_to_evaluate, evaluate_checkpoint, report
from spknet.logs import log
from spknet.training import run as training_run

__all__ = ["main", "run", "build_parser", "parse_args", "spec_from_argv"]


def choose_device(args, spec) -> torch.device:
    """The device of this process (the flags', else a GPU when there is one), then whether the evaluation's
    precision runs on it."""
    device = distributed.choose_device(args.device, args.gpu_id)
    spec.evaluation.check_device(device.type)
    return device


def run_train(args) -> int:
    spec = cli.training_spec(args, warn=log.warning if distributed.is_main() else None)
    device = choose_device(args, spec)
    return training_run.train(spec, device, lambda classes: cli.describe(args, spec.model, classes))


def run_eval(args) -> None:
    """Score a checkpoint, rebuilt from the options it records; model flags given override them."""
    spec = cli.run_spec(args)
    device = choose_device(args, spec)      # before any file is read
    source = checkpoint_to_evaluate(args.initial_model, args.save_path)
    outcome, calibration, _ = evaluate_checkpoint(source, spec.evaluation, spec.data, device,
                                                  overrides=cli.model_spec(args, given_only=True),
                                                  trust=args.trust_checkpoint)
    report(outcome, spec.evaluation, os.path.join(args.save_path, "result"), calibration, model=source)


def run(args) -> int:
    """This process's work; under --distributed it joins the process group first (torchrun or spawned)."""
    if args.distributed:
        distributed.init_process_group(distributed.local_device(args.device))
    logs.setup(main_process=distributed.is_main())
    try:
        if args.eval:
            run_eval(args)
            return 0
        return run_train(args)
    finally:
        distributed.shutdown()


def _spawned(local_rank: int, processes: int, argv) -> None:
    """One of the processes of the one-machine launch (``--distributed`` without torchrun)."""
    os.environ.update(distributed.spawn_environment(parse_args(argv).port, local_rank, processes))
    code = main(argv)
    if code:
        sys.exit(code)


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        if args.distributed and not distributed.launched_by_torchrun():
            try:
                processes = distributed.gpus_to_spawn()
            except SpeakerNetError as error:
                raise SpeakerNetError(f"--distributed without torchrun: {error}: torchrun --nproc_per_node N "
                                      f"trainSpeakerNet.py --distributed ...") from None
            torch.multiprocessing.spawn(_spawned, args=(processes, argv), nprocs=processes)
            return 0
        return run(args)
    except SpeakerNetError as error:
        hint = ("; if you trust the file, --trust_checkpoint loads it (and runs its code)"
                if isinstance(error, UnsafeCheckpoint) else "")
        print(f"error{f' (rank {distributed.rank()})' if distributed.is_active() else ''}: "
              f"{worker_message(error)}{hint}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
