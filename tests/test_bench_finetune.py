"""benchmarks/bench_finetune.py at a tiny size: the halves are disjoint, the telephone copy is made, each run
gives an EER per evaluated epoch, the cross-channel scores exist, and a finished run is read, not repeated."""

import json
import math
import os

import pytest

from benchmarks import bench_finetune as bench
from spknet.data.synthetic import make_corpus

TINY_CORPUS = {"speakers": 12, "utterances": 4, "test_speakers": 4, "test_utterances": 4, "trials": 40,
               "min_duration": 1.0, "max_duration": 1.5, "seed": 0}
TINY = ["--full", "2", "--short", "1", "--test_interval", "1", "--seeds", "1",
        "--args", "--batch_size 4 --nDataLoaderThread 0 --max_frames 30"]


def speakers(path: str) -> set[str]:
    with open(path, encoding="utf-8") as handle:
        return {line.split()[0] for line in handle if line.strip()}


@pytest.mark.slow
def test_pre_training_fine_tuning_and_scratch_each_give_an_eer_and_resume(tmp_path):
    corpus, work = str(tmp_path / "corpus"), str(tmp_path / "work")
    make_corpus(corpus, **TINY_CORPUS)
    common = ["--corpus", corpus, "--workdir", work]
    bench.main(["prepare", *common])
    lists = os.path.join(work, "lists")
    first, second = speakers(os.path.join(lists, "A.txt")), speakers(os.path.join(lists, "B.txt"))
    assert len(first) == len(second) == 6 and not first & second
    assert speakers(os.path.join(lists, "B_mix.txt")) == first | second
    with open(os.path.join(lists, "B_tel.txt"), encoding="utf-8") as handle:
        assert all(os.path.isfile(os.path.join(work, "root", line.split()[1])) for line in handle)

    runs = "pre,ft,tel_ft"
    bench.main(["run", *common, *TINY, "--only", runs])
    checkpoint = bench.final_model(work, 1, "ft", 2)
    stamp = os.stat(checkpoint).st_mtime_ns
    bench.main(["run", *common, *TINY, "--only", runs])         # finished: read, not trained again
    assert os.stat(checkpoint).st_mtime_ns == stamp

    table = bench.main(["report", *common, *TINY])
    expected = {"pre@1", "pre@2", "ft@1", "ft@2", "tel_ft@1", "tel_ft@2", "pre_on_tel", "ft_on_tel",
                "tel_ft_on_clean"}
    assert set(table) == expected
    assert all(len(values) == 1 and math.isfinite(values[0]) and 0 <= values[0] <= 100 for values in table.values())
    with open(os.path.join(work, "results.json"), encoding="utf-8") as handle:
        assert json.load(handle)["eer"] == table
