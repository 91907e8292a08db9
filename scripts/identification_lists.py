#!/usr/bin/env python3
"""Enrolment and test lists for measuring identification, from the files of trial lists.

    python scripts/identification_lists.py --test_list data/veri_test2.txt --out exps/id
    python inference.py enroll --initial_model M --db exps/id/speakers.db --list exps/id/enrol.txt --root DIR
    python inference.py identify --eval --initial_model M --db exps/id/speakers.db --list exps/id/test.txt --root DIR

The files of the trial lists (``speaker/session/file`` paths, as VoxCeleb1 and the synthetic corpus have them)
are split by :func:`spknet.speakers.session_split`: every ``--impostor_every``-th speaker is an impostor, the
others are enrolled with their first session and identified on the rest. Writes ``enrol.txt`` and ``test.txt``
(``<speaker> <file>`` lines, the trial lists' relative paths) in ``--out``.
"""

import argparse
import os
import sys

from spknet import atomic
from spknet.errors import exit_status
from spknet.evaluation import read_trial_list
from spknet.speakers import session_split


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test_list", required=True, help="trial list(s), comma-separated")
    parser.add_argument("--out", required=True, help="folder for enrol.txt and test.txt")
    parser.add_argument("--impostor_every", type=int, default=2, help="every Nth speaker is an impostor (0: none)")
    return parser.parse_args(argv)


def write_lists(args) -> None:
    files = {key: None for path in args.test_list.split(",") for trial in read_trial_list(path.strip())
             for key in (trial.enroll, trial.test)}
    enrol, test = session_split(list(files), args.impostor_every)
    os.makedirs(args.out, exist_ok=True)
    for name, pairs in (("enrol.txt", enrol), ("test.txt", test)):
        atomic.write_text(os.path.join(args.out, name), "".join(f"{speaker} {path}\n" for speaker, path in pairs))
    enrolled = len({speaker for speaker, _ in enrol})
    print(f"{args.out}: {enrolled} speakers enrolled from {len(enrol)} files; {len(test)} test files "
          f"({len({s for s, _ in test}) - enrolled} impostor speakers)")


def main(argv=None) -> int:
    return exit_status(write_lists, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
