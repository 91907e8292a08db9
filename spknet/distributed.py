"""torch.distributed plumbing: process setup (torchrun or one process per GPU), and the global batch.

Launch with ``torchrun --nproc_per_node N trainSpeakerNet.py --distributed ...`` (multi-node too: RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT come from the environment), or on one machine with
``--distributed`` alone, which spawns one process per visible GPU (voxceleb_trainer's way, port ``--port``).
NCCL on GPUs, gloo on CPU.
"""

import datetime
import os
import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn

from spknet.errors import SpeakerNetError

ENVIRONMENT = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in ENVIRONMENT)


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def is_main() -> bool:
    return rank() == 0


def local_device(requested: str | None) -> torch.device:
    """This process's device: its GPU (LOCAL_RANK) when CUDA is used, else the CPU."""
    use_cuda = torch.cuda.is_available() and not (requested or "").startswith("cpu")
    if use_cuda:
        index = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def choose_device(requested: str | None, gpu_id: int = 0) -> torch.device:
    """The device of this process: the rank's under torch.distributed, else ``requested`` (or CUDA ``gpu_id`` when
    present, the CPU otherwise), one this machine has. What runs on it is the specs' to check
    (:meth:`~spknet.specs.EvalSpec.check_device`)."""
    if is_active():
        device = local_device(requested)
    elif requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise SpeakerNetError(f"--device {requested}: CUDA is not available on this machine")
        device = torch.device(requested)
    else:
        device = torch.device(f"cuda:{gpu_id}" if torch.cuda.is_available() else "cpu")
    return device


def init_process_group(device: torch.device, timeout_minutes: float = 30) -> None:
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes),
                            device_id=device if device.type == "cuda" else None)


def spawn_environment(port: str, local_rank: int, processes: int) -> dict:
    """What torchrun would set, for the one-machine launch."""
    return {"MASTER_ADDR": "localhost", "MASTER_PORT": str(port), "RANK": str(local_rank),
            "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(processes)}


def gpus_to_spawn() -> int:
    count = torch.cuda.device_count()
    if count == 0:
        raise SpeakerNetError("no GPU to spawn processes on (one per GPU); on the CPU, launch the processes with "
                              "torchrun instead")
    return count


def _all_gather_with_grad(x: torch.Tensor) -> list[torch.Tensor]:
    """torch.distributed.nn's ``all_gather``, the public autograd-aware collective, without its deprecation
    warning (its replacement is still private); the warning filters are restored afterwards."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated")
        return dist_nn.all_gather(x)


def gather_with_grad(x: torch.Tensor, equal_sizes: bool) -> torch.Tensor:
    """Concatenate every rank's ``x`` along dim 0 (rank order); gradients flow back to each rank's own part.

    With unequal sizes (the imbalanced sampler) the sizes are exchanged first and the parts padded.
    """
    if not is_active():
        return x
    if equal_sizes:
        return torch.cat(_all_gather_with_grad(x))
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    padded = torch.cat([x, x.new_zeros((max(sizes) - x.shape[0], *x.shape[1:]))])
    parts = _all_gather_with_grad(padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


def gather_without_grad(x: torch.Tensor, equal_sizes: bool) -> torch.Tensor:
    with torch.no_grad():
        return gather_with_grad(x.detach(), equal_sizes) if is_active() else x


def gather_strided(mine: torch.Tensor, total: int, device: torch.device) -> torch.Tensor:
    """Reassemble ``total`` rows sharded round-robin (rank ``r`` holds rows ``r, r + k, ...``) on every rank.

    A rank with no rows may hold a tensor of another trailing shape (e.g. ``(0, crops, 0)``); the shape of the
    ranks that have rows wins. Collectives run on ``device`` (NCCL needs CUDA tensors); the result is on the CPU.
    """
    shapes = all_gather_objects(tuple(mine.shape))
    trailing = next(shape[1:] for shape in shapes if shape[0] > 0) if total else tuple(mine.shape[1:])
    if mine.shape[0] == 0:
        mine = torch.empty((0, *trailing), dtype=mine.dtype)
    gathered = gather_without_grad(mine.to(device), equal_sizes=False).cpu()
    order = torch.cat([torch.arange(r, total, world_size()) for r in range(world_size())])
    out = torch.empty_like(gathered)
    out[order] = gathered
    return out


def all_gather_objects(obj) -> list:
    if not is_active():
        return [obj]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    if is_active():
        dist.barrier()


def shutdown() -> None:
    if is_active():
        dist.destroy_process_group()
