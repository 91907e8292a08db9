"""torch.distributed on the CPU (gloo): k ranks with batch B/k compute the loss and gradients of one process with
batch B, parameters stay identical across ranks, and a 2-process command-line run writes the usual checkpoint."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spknet import distributed
from spknet.evaluation import embed_files
from spknet.model import SpeakerNet
from spknet.specs import TrainingSpec
from spknet.training.trainer import ModelTrainer
from tests.helpers import REPO, free_port

pytestmark = pytest.mark.slow      # subprocess runs of the command line (seconds each)

CPU = torch.device("cpu")

SAMPLES = 8240            # 0.5-s crops
WORLD = 2


def make_net(trainfunc):
    torch.manual_seed(0)
    net = SpeakerNet.build(model="ResNetSE34L", trainfunc=trainfunc, nOut=32, nSpeakers=10).double()
    # BatchNorm normalises with per-rank batch statistics in training mode (as in any DDP run without SyncBN),
    # so the exact comparison uses the running statistics.
    net.__S__.eval()
    return net


def global_batch(trainfunc):
    """Waves, labels and group sizes of one global batch, and how it splits between 2 ranks (group counts)."""
    generator = torch.Generator().manual_seed(1)
    sizes = [2, 3, 2, 2] if trainfunc == "mp" else [2, 2, 2, 2]
    labels = torch.tensor([label for label, size in zip([3, 7, 1, 5], sizes) for _ in range(size)])
    waves = torch.randn(len(labels), SAMPLES, generator=generator, dtype=torch.float64) * 3000
    return waves, labels, sizes


def rank_slice(trainfunc, rank):
    waves, labels, sizes = global_batch(trainfunc)
    groups = [slice(0, 2), slice(2, 4)][rank]
    start = sum(sizes[:groups.start])
    stop = start + sum(sizes[groups])
    return waves[start:stop], labels[start:stop], torch.tensor(sizes[groups])


def loss_and_gradients(model, net, waves, labels, sizes):
    loss, _ = model(waves, labels, len(sizes))
    loss.backward()
    return loss.detach(), {name: p.grad.detach().clone() for name, p in net.named_parameters() if p.grad is not None}


def worker(rank, port, trainfunc, out):
    torch.set_num_threads(1)          # two ranks share the two cores
    os.environ.update(distributed.spawn_environment(port, rank, WORLD))
    distributed.init_process_group(torch.device("cpu"))
    try:
        net = make_net(trainfunc)
        trainer = ModelTrainer(net, torch.device("cpu"), TrainingSpec(optimizer="sgd", scheduler="steplr", lr=0.01))
        loss, grads = loss_and_gradients(trainer.model, net, *rank_slice(trainfunc, rank))
        # a few optimizer steps: parameters must stay identical on both ranks
        for _ in range(3):
            trainer.optimizer.zero_grad()
            trainer.model(*rank_slice(trainfunc, rank)[:2], 2)[0].backward()
            trainer.optimizer.step()
        params = torch.cat([p.detach().flatten() for p in net.parameters()])
        gathered = [torch.zeros_like(params) for _ in range(WORLD)]
        dist.all_gather(gathered, params)
        if rank == 0:
            torch.save({"loss": loss, "grads": grads, "same_params": torch.equal(gathered[0], gathered[1])}, out)
    finally:
        distributed.shutdown()


@pytest.mark.parametrize("trainfunc", ["mp_balance", "mmp_balance", "mp"])
def test_two_ranks_equal_one_process(tmp_path, trainfunc):
    out = tmp_path / "rank0.pt"
    mp.spawn(worker, args=(free_port(), trainfunc, str(out)), nprocs=WORLD)
    result = torch.load(out, weights_only=True)
    net = make_net(trainfunc)
    waves, labels, sizes = global_batch(trainfunc)
    loss, grads = loss_and_gradients(net, net, waves, labels, torch.tensor(sizes))
    assert torch.allclose(result["loss"], loss, rtol=0, atol=1e-5)
    assert grads.keys() == result["grads"].keys()
    for name, grad in grads.items():
        assert torch.allclose(result["grads"][name], grad, rtol=1e-5, atol=1e-5), name
    assert result["same_params"]


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
                    reason="torchrun not installed beside this interpreter")
def test_torchrun_two_process_training(tiny_corpus, tmp_path):
    save_path = tmp_path / "run"
    command = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc_per_node", "2",
               "--master_port", str(free_port()), str(REPO / "trainSpeakerNet.py"), "--distributed",
               "--device", "cpu", "--model", "ResNetSE34L", "--trainfunc", "mp", "--max_frames", "50",
               "--batch_size", "4", "--max_epoch", "2", "--test_interval", "2", "--average_epochs", "2",
               "--nDataLoaderThread", "0", "--save_path", str(save_path),
               *[f"--{key}={value}" for key, value in tiny_corpus.items()]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ,
                                                                                       "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (save_path / "result" / "scores.txt").read_text().splitlines()
    logged = [line for line in lines if line.startswith("IT")]
    assert len(logged) == 2 and "VEER" not in logged[0] and "VEER" in logged[1]
    # the final average of epochs 1-2 is scored on both ranks' shares of the files, written and logged once
    assert len([line for line in lines if line.startswith("INFO average of epochs 1-2")]) == 1
    assert (save_path / "model" / "average_last2.model").is_file()
    assert len(list((save_path / "tensorboard").glob("events.out.tfevents.*"))) == 1     # rank 0's alone
    checkpoint = torch.load(save_path / "model" / "model000000001.model", weights_only=True)
    single = SpeakerNet.build(model="ResNetSE34L", trainfunc="mp", nSpeakers=40).state_dict()
    assert {k: v.shape for k, v in checkpoint["model_state_dict"].items()} == {k: v.shape for k, v in single.items()}
    assert checkpoint["epoch"] == 1


def embed_worker(rank, port, files, root, out):
    torch.set_num_threads(1)
    os.environ.update(distributed.spawn_environment(port, rank, WORLD))
    distributed.init_process_group(torch.device("cpu"))
    try:
        torch.manual_seed(0)
        network = SpeakerNet.build(model="ResNetSE34L", nOut=16).__S__.eval()
        embeddings = {count: embed_files(network, files[:count], root, 50, CPU, show_progress=False)
                      for count in (len(files), 1)}
        torch.save(embeddings, f"{out}.{rank}")
    finally:
        distributed.shutdown()


def test_evaluation_is_sharded_over_ranks(tiny_corpus, tmp_path):
    """Each rank embeds half of the files; every rank ends with all embeddings, in file order, equal to one
    process's (also when a rank has no file at all)."""
    root = tiny_corpus["test_path"]
    files = sorted({path for line in open(tiny_corpus["test_list"]) for path in line.split()[1:]})[:5]
    out = tmp_path / "embeddings"
    mp.spawn(embed_worker, args=(free_port(), files, root, str(out)), nprocs=WORLD)
    torch.manual_seed(0)
    network = SpeakerNet.build(model="ResNetSE34L", nOut=16).__S__.eval()
    for rank in range(WORLD):
        sharded = torch.load(f"{out}.{rank}", weights_only=True)
        for count, embeddings in sharded.items():
            single = embed_files(network, files[:count], root, 50, CPU, show_progress=False)
            assert embeddings.shape == single.shape == (count, 10, 16)
            assert torch.allclose(embeddings, single, atol=1e-5), (rank, count)


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
                    reason="torchrun not installed beside this interpreter")
def test_failure_on_one_rank_ends_all_ranks(tiny_corpus, tmp_path):
    """A file of NaN samples is read by one rank only (the shards are disjoint; 120 groups in global batches of 8
    use every group): that rank stops with the
    file's error and the other, waiting in a collective, ends too, instead of hanging; no checkpoint is written."""
    bad = tmp_path / "nan.wav"
    samples = np.full(40000, np.nan, dtype=np.float32)        # every crop of it is bad
    soundfile.write(bad, samples, 16000, subtype="FLOAT")
    lines = open(tiny_corpus["train_list"]).read().splitlines()
    speaker = lines[0].split()[0]
    train_list = tmp_path / "train_list.txt"
    train_list.write_text("\n".join([f"{speaker} {bad}", *lines[1:]]) + "\n")
    save_path = tmp_path / "run"
    command = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc_per_node", "2",
               "--master_port", str(free_port()), str(REPO / "trainSpeakerNet.py"), "--distributed",
               "--device", "cpu", "--model", "ResNetSE34L", "--trainfunc", "mp_balance", "--max_frames", "50",
               "--batch_size", "4", "--max_epoch", "1", "--nDataLoaderThread", "0", "--save_path", str(save_path),
               "--train_list", str(train_list), "--train_path", tiny_corpus["train_path"],
               "--test_list", tiny_corpus["test_list"], "--test_path", tiny_corpus["test_path"]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0
    assert f"{bad}: non-finite (NaN/inf) samples" in result.stderr or \
        f"training file {bad} cannot be read: non-finite (NaN/inf) samples" in result.stderr
    assert not (save_path / "model" / "model000000001.model").exists()


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
                    reason="torchrun not installed beside this interpreter")
def test_distributed_throughput_benchmark_runs(tiny_corpus, capsys):
    from benchmarks import bench_distributed_cpu

    result = bench_distributed_cpu.main(["--corpus", os.path.dirname(tiny_corpus["train_list"]), "--max_frames", "20",
                                         "--batch_size", "8"])
    assert set(result["seconds"]) == {"1 process", "2 processes"}
    assert all(seconds > 0 for seconds in result["seconds"].values()) and result["ratio"] > 0
    assert "2 processes / 1 process:" in capsys.readouterr().out
