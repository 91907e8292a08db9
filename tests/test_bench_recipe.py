"""benchmarks/bench_recipe.py at a tiny size: an arm gives a last-epoch and an averaged VEER per seed, the
"average" of one checkpoint scores exactly as the trainer scored that epoch, and a loss without a margin drops
the margin arm."""

import math

import pytest

from benchmarks import bench_recipe as bench
from spknet.data.synthetic import make_corpus

TINY_CORPUS = {"speakers": 16, "utterances": 4, "test_speakers": 4, "test_utterances": 4, "trials": 40,
               "min_duration": 1.0, "max_duration": 1.5, "seed": 0}
TINY_RUN = ["--epochs", "2", "--batch_size", "8", "--max_frames", "20", "--device", "cpu", "--warmup_epochs", "1",
            "--margin_start_epoch", "2", "--margin_rampup_epochs", "1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recipe") / "corpus"
    make_corpus(str(folder), **TINY_CORPUS)
    return ["--corpus", str(folder)]


@pytest.mark.slow
def test_every_arm_gives_both_veers_and_one_checkpoint_averages_to_itself(corpus):
    arms = ["constant", "warmup_margin"]          # a per-epoch and a per-iteration schedule; the flags test has all
    result = bench.main([*corpus, *TINY_RUN, "--seeds", "1", "--average_last", "1", "--arms", ",".join(arms)])
    assert result["seeds"] == [1]
    for arm in arms:
        last, averaged = result[arm]["last"], result[arm]["averaged"]
        assert len(last) == len(averaged) == 1
        assert all(math.isfinite(v) and 0.0 <= v <= 100.0 for v in last + averaged), (arm, last, averaged)
        # the mean of the last checkpoint alone is that checkpoint: evaluate_checkpoint agrees with the trainer
        assert averaged == pytest.approx(last, abs=1e-3), arm


@pytest.mark.slow
def test_a_loss_without_margin_leaves_out_the_margin_arm(corpus, capsys):
    result = bench.main([*corpus, *TINY_RUN, "--seeds", "1", "--trainfunc", "angleproto", "--average_last", "2",
                         "--arms", "plain,warmup_margin"])
    assert set(result) == {"seeds", "plain"}
    assert "has no margin: arm warmup_margin left out" in capsys.readouterr().err


def test_arm_flags_add_only_the_arm_s_parts():
    options = bench.build_parser().parse_args(["--warmup_epochs", "2", "--margin_start_epoch", "5",
                                               "--margin_rampup_epochs", "3"])
    decay = ["--scheduler", "warmup_cosine", "--final_lr", "0.0005"]
    assert bench.arm_flags("constant", options) == ["--scheduler", "steplr", "--lr_decay", "1"]
    assert bench.arm_flags("plain", options) == decay
    assert bench.arm_flags("warmup", options) == decay + ["--warmup_epochs", "2.0"]
    assert bench.arm_flags("warmup_margin", options) == decay + ["--warmup_epochs", "2.0", "--margin_start_epoch",
                                                                 "5", "--margin_rampup_epochs", "3.0"]
    with pytest.raises(SystemExit):
        bench.main(["--epochs", "3", "--average_last", "4"])
    with pytest.raises(SystemExit):
        bench.main(["--arms", "plain,cosine"])
