#!/usr/bin/env python
"""Data preparation: VoxCeleb, MUSAN and RIRs (downloaded, unpacked, converted, listed; the steps are in
``spknet/data/voxceleb.py``), for instance in one command:

    python dataprep.py --save_path data --download --extract --convert --make_list --augment \
                       --voxceleb_url BASE --user USER --password PASS       (or --voxceleb_list FILE)

or the synthetic corpus:

    python dataprep.py --synthetic --save_path data/synth [--voxceleb_layout] [--speakers 300] [--utterances 12]
                       [--test_speakers 40] [--test_utterances 12] [--trials 3000]
                       [--min_duration 2.1] [--max_duration 4.0] [--seed 0] [--workers N]

writes ``SAVE_PATH/wav/idNNNNN/sessSS/UUUUU.wav`` (16 kHz mono PCM_16), ``SAVE_PATH/train_list.txt`` (training
speakers, ``speaker relative/path.wav``) and ``SAVE_PATH/veri_test.txt`` (held-out speakers,
``label enroll.wav test.wav``, about half target trials); ``--voxceleb_layout`` writes VoxCeleb's layout instead
(see ``make_corpus``).  The same arguments (whatever ``--workers``) give
byte-identical files.  See ``synthetic_corpus.py`` for the signal model.

    python dataprep.py --make_shards --train_list L --train_path D --shard_dir OUT [--shard_size 1000]
                       [--shard_audio original|flac] [--seed 0]

writes the list's utterances as speaker-grouped tar shards ``OUT/shard-000000.tar ...`` and ``OUT/manifest.json``
(see ``spknet/data/shards.py``; train on them with ``trainSpeakerNet.py --train_shards``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import typing

from spknet.data import shards
from spknet.data import voxceleb as prep_voxceleb
from spknet.data.synthetic import CorpusConfig, make_corpus
from spknet.errors import SpeakerNetError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Prepare speaker-verification data (synthetic VoxCeleb-shaped corpus).")
    p.add_argument("--synthetic", action="store_true", help="generate the synthetic corpus")
    p.add_argument("--save_path", type=str, default="data/synthetic", help="output directory (default: %(default)s)")
    p.add_argument("--voxceleb_layout", action="store_true",
                   help="--synthetic in VoxCeleb's layout, as recipes/voxceleb/run.sh reads it: voxceleb2/ (training "
                        "speakers), voxceleb1/ (test speakers), train_list.txt, veri_test2.txt, list_test_all2.txt")
    types = typing.get_type_hints(CorpusConfig)
    for option in dataclasses.fields(CorpusConfig):   # --speakers ... --seed: one flag per field, same name
        p.add_argument(f"--{option.name}", type=types[option.name], default=option.default,
                       help=f"{option.metadata['help']} (default: %(default)s)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="worker processes; does not change the output (default: %(default)s)")
    prep_voxceleb.add_arguments(p)      # --download, --extract, --convert, --make_list, --augment, --musan, --rirs
    group = p.add_argument_group("tar shards (spknet/data/shards.py)")
    group.add_argument("--make_shards", action="store_true", help="write --train_list as tar shards in --shard_dir")
    group.add_argument("--train_list", type=str, default="", help="--make_shards: '<speaker> <path>' per line")
    group.add_argument("--train_path", type=str, default="", help="--make_shards: root of the list's paths")
    group.add_argument("--shard_dir", type=str, default="", help="--make_shards: output folder")
    group.add_argument("--shard_size", type=int, default=1000, help="--make_shards: utterances per shard, at most "
                                                                     "(default: %(default)s)")
    group.add_argument("--shard_audio", choices=shards.AUDIO_FORMATS, default="original",
                       help="--make_shards: the files' own bytes, or re-encoded as 16-kHz mono FLAC "
                            "(default: %(default)s)")
    return p


def run_make_shards(args) -> int:
    """``--make_shards``: one error line and status 2 on a bad input (nothing is written then)."""
    if not args.shard_dir:
        print("error: --make_shards needs --shard_dir", file=sys.stderr)
        return 2
    started = time.time()
    try:
        manifest = shards.make_shards(args.train_list, args.train_path, args.shard_dir, args.shard_size, args.seed,
                                      args.shard_audio)
    except SpeakerNetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(shards.describe_rate(manifest, time.time() - started) + f"\n  manifest: "
          f"{os.path.join(args.shard_dir, shards.MANIFEST)}")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.make_shards:
        return run_make_shards(args)
    if prep_voxceleb.requested(args):   # VoxCeleb / MUSAN / RIR steps (spknet.data.voxceleb), then --synthetic if given
        status = prep_voxceleb.run(args)
        if status or not args.synthetic:
            return status
    if not args.synthetic:
        parser.error("nothing to do: pass --synthetic, or the VoxCeleb steps (--download, --extract, ...)")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1 (got {args.workers})")
    try:
        names = [option.name for option in dataclasses.fields(CorpusConfig)]
        config = CorpusConfig(**{name: getattr(args, name) for name in names})
        config.validate()
    except ValueError as e:
        parser.error(str(e))
    info = make_corpus(args.save_path, workers=args.workers, progress=True, voxceleb_layout=args.voxceleb_layout,
                       **dataclasses.asdict(config))
    print(
        f"wrote {info['files']} files ({info['seconds'] / 3600:.2f} h of audio, {info['bytes'] / 2**20:.1f} MiB) "
        f"in {info['elapsed']:.1f} s ({info['files'] / max(info['elapsed'], 1e-9):.1f} files/s, "
        f"{args.workers} worker{'s' if args.workers > 1 else ''})\n"
        f"  train list: {info['train_list']}\n  trials:     {', '.join(info['test_lists'])}\n"
        f"  wav root:   {info['train_path']}" + (f" (test: {info['test_path']})" if args.voxceleb_layout else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
