"""torch.distributed on the CPU (gloo): k ranks with batch B/k compute the loss and gradients of one process with
batch B, parameters stay identical across ranks, and a 2-process command-line run writes the usual checkpoint."""

import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import distributed
from SpeakerNet import ModelTrainer, SpeakerNet
from tests.helpers import REPO

SAMPLES = 8240            # 0.5-s crops
WORLD = 2


def free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def make_net(trainfunc):
    torch.manual_seed(0)
    net = SpeakerNet(model="ResNetSE34L", trainfunc=trainfunc, nOut=32, nSpeakers=10).double()
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
        trainer = ModelTrainer(net, torch.device("cpu"), optimizer="sgd", scheduler="steplr", lr=0.01)
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
               "--batch_size", "4", "--max_epoch", "1", "--nDataLoaderThread", "0", "--save_path", str(save_path),
               *[f"--{key}={value}" for key, value in tiny_corpus.items()]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ,
                                                                                       "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in (save_path / "result" / "scores.txt").read_text().splitlines() if line.startswith("IT")]
    assert len(lines) == 1 and "VEER" in lines[0]
    checkpoint = torch.load(save_path / "model" / "model000000001.model", weights_only=True)
    single = SpeakerNet(model="ResNetSE34L", trainfunc="mp", nSpeakers=40).state_dict()
    assert {k: v.shape for k, v in checkpoint["model_state_dict"].items()} == {k: v.shape for k, v in single.items()}
    assert checkpoint["epoch"] == 1
