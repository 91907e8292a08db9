#!/usr/bin/env python3
"""One command from a fresh clone to a trained, evaluated speaker-verification model.

Builds the synthetic corpus (if absent), reports the non-learned MFCC baseline on its trials, trains
ResNetSE34L + SAP with mp_balance (``configs/quickstart.yaml``), and prints EER and minDCF every 5 epochs and, at
the end, of the mean weights of the last 5 (``model/average_last5.model``, the model to use); the DET curve and the
score histogram are written to the run's ``result/`` folder. Any trainSpeakerNet.py flag may follow, e.g.
``--max_epoch 4`` or real VoxCeleb lists with ``--train_list ... --train_path ... --test_list ... --test_path ...``.
"""

import argparse
import os
import sys
import time

import trainSpeakerNet
from spknet import baseline
from spknet.data.synthetic import make_corpus

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="data/synthetic", help="synthetic corpus folder (built when absent)")
    parser.add_argument("--config", default=os.path.join(HERE, "configs", "quickstart.yaml"))
    parser.add_argument("--skip_baseline", action="store_true", help="do not compute the MFCC baseline")
    own, extra = parser.parse_known_args(argv)
    started = time.time()
    # lists of your own (e.g. VoxCeleb) replace the synthetic corpus, which is then neither built nor scored
    own_lists = argparse.ArgumentParser(add_help=False)
    own_lists.add_argument("--train_list")
    own_lists.add_argument("--test_list")
    given, _ = own_lists.parse_known_args(extra)
    train_list = os.path.join(own.corpus, "train_list.txt")
    test_list = os.path.join(own.corpus, "veri_test.txt")
    wav = os.path.join(own.corpus, "wav")
    corpus = ["--train_list", train_list, "--test_list", test_list, "--train_path", wav, "--test_path", wav]
    if given.train_list or given.test_list:
        corpus = []
    elif not (os.path.isfile(train_list) and os.path.isfile(test_list)):
        print(f"Building the synthetic corpus in {own.corpus} ...")
        make_corpus(own.corpus, workers=os.cpu_count() or 1, progress=True)
    if corpus and not own.skip_baseline:
        print(f"MFCC-statistics baseline on {test_list}: EER {baseline.baseline_eer(own.corpus):.2f}%")
    code = trainSpeakerNet.main(["--config", own.config, *corpus, *extra])
    print(f"quickstart finished in {time.time() - started:.0f} s (exit code {code})")
    return code


if __name__ == "__main__":
    sys.exit(main())
