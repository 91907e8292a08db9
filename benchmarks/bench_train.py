"""Training-step throughput: our trainer's step next to one written the way voxceleb_trainer's ``train_network``
does it, on the same network, loss, weights and batches, in the same run.

Default shape: ResNetSE34L + angleproto, 64 speakers x 2 utterances x 200 frames (issue: "bench_train").
``--networks ResNetSE34L,ResNetSE34V2,ECAPA_TDNN,ResNet34`` (or ``all``) adds our step's utterances/s for each
network at its own defaults (ECAPA_TDNN with C = 512), same shape and loss, and its ratio to ResNetSE34L's.
``benchmarks/bench_train_gpu.py`` runs the original README's mp_balance shape on a GPU.

    python -m benchmarks.bench_train                          # the default shape
    python -m benchmarks.bench_train --networks all
    python -m benchmarks.bench_train --mixedprec bf16         # our step in bfloat16 against the float32 reference
"""

import argparse
import copy
import time

import torch

from spknet.data import max_audio_samples
from spknet.model import SpeakerNet
from spknet.specs import TrainingSpec
from spknet.training.trainer import ModelTrainer


class Batches(list):
    """Pre-made batches (no audio I/O: the step alone is measured)."""


def make_batches(groups, per_group, frames, count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(groups).repeat_interleave(per_group)
    return Batches((torch.randn(groups * per_group, max_audio_samples(frames), generator=generator) * 3000,
                    labels, torch.full((groups,), per_group)) for _ in range(count))


def reference_epoch(net, optimizer, batches, device):
    """voxceleb_trainer's loop: data (per_group, groups, samples) moved per step, module.zero_grad(),
    the loss and accuracy copied to the host with two .item() calls."""
    net.train()
    total_loss, total_top1 = 0.0, 0.0
    for waves, labels, sizes in batches:
        groups = len(sizes)
        data = waves.view(groups, -1, waves.shape[-1]).transpose(1, 0)
        net.zero_grad()
        label = torch.LongTensor(labels.view(groups, -1)[:, 0].tolist()).to(device)
        outp = net.__S__(data.reshape(-1, data.size(-1)).to(device))
        if net.train_normalize:
            outp = torch.nn.functional.normalize(outp, p=2, dim=1)
        outp = outp.reshape(data.size(0), groups, -1).transpose(1, 0).squeeze(1)
        nloss, prec1 = net.__L__(outp, label)
        nloss.backward()
        optimizer.step()
        total_loss += nloss.detach().cpu().item()
        total_top1 += prec1.detach().cpu().item()
    return total_loss / len(batches)


def synchronise(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(run, device, repeats):
    times = []
    for _ in range(repeats):
        synchronise(device)
        started = time.perf_counter()
        run()
        synchronise(device)
        times.append(time.perf_counter() - started)
    return min(times)


def measure(trainfunc="angleproto", groups=64, per_group=2, frames=200, steps=3, repeats=3, device="cpu",
            mixedprec=None, compile=False, reference=True, classes=None, model="ResNetSE34L", nOut=512, **options):
    """Utterances/s of our step and of the reference step (None when not measured). ``model``, ``nOut`` (None:
    the network's own) and ``options`` (``channels=...``) choose the network."""
    device = torch.device(device)
    torch.manual_seed(0)
    net = SpeakerNet.build(model=model, trainfunc=trainfunc, nOut=nOut, nSpeakers=classes or groups, **options)
    net = net.to(device)
    reference_net = copy.deepcopy(net)
    ours = ModelTrainer(net, device, TrainingSpec(optimizer="sgd", scheduler="steplr", lr=1e-4, mixedprec=mixedprec,
                                                  compile=compile))
    batches = make_batches(groups, per_group, frames, steps)
    warm = make_batches(groups, per_group, frames, 1, seed=1)
    ours.train_network(warm, epoch=1, show_progress=False)
    ours_seconds = time_runs(lambda: ours.train_network(batches, epoch=1, show_progress=False), device, repeats)
    result = {"ours": groups * per_group * steps / ours_seconds, "reference": None}
    if reference:
        optimizer = torch.optim.SGD(reference_net.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-5)
        reference_epoch(reference_net, optimizer, warm, device)
        seconds = time_runs(lambda: reference_epoch(reference_net, optimizer, batches, device), device, repeats)
        result["reference"] = groups * per_group * steps / seconds
    return result


NETWORKS = {"ResNetSE34L": {}, "ResNetSE34V2": {}, "ECAPA_TDNN": {"channels": 512}, "ResNet34": {}}


def measure_networks(names, **shape) -> dict:
    """Our step's utterances/s for each network at its own defaults (nOut, mels, pooling), same shape and loss."""
    return {name: measure(model=name, nOut=None, reference=False, **NETWORKS.get(name, {}), **shape)["ours"]
            for name in names}


def print_networks(rates: dict) -> None:
    baseline = rates.get("ResNetSE34L")
    print(f"{'network (our step)':<28}{'parameters':>12}{'utt/s':>10}{'x ResNetSE34L':>15}")
    for name, rate in rates.items():
        net = SpeakerNet.build(model=name, **NETWORKS.get(name, {})).__S__
        ratio = f"{rate / baseline:.2f}x" if baseline else "-"
        print(f"{name:<28}{sum(p.numel() for p in net.parameters()) / 1e6:>11.2f}M{rate:>10.1f}{ratio:>15}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--trainfunc", default="angleproto")
    parser.add_argument("--groups", type=int, default=64)
    parser.add_argument("--per_group", type=int, default=2)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--mixedprec", choices=["fp16", "bf16"], default=None,
                        help="our step under autocast (the reference step stays in float32)")
    parser.add_argument("--networks", default="",
                        help="comma-separated networks (or 'all') to measure as well: " + ", ".join(NETWORKS))
    args = parser.parse_args(argv)
    result = measure(args.trainfunc, args.groups, args.per_group, args.frames, args.steps, args.repeats,
                     args.device, mixedprec=args.mixedprec, compile=args.compile)
    print(f"device {args.device}, threads {torch.get_num_threads()}, {args.trainfunc}, "
          f"{args.groups} x {args.per_group} x {args.frames} frames, {args.steps} steps, best of {args.repeats}")
    print(f"{'step':<28}{'utt/s':>10}")
    ours = f"ours ({args.mixedprec})" if args.mixedprec else "ours"
    print(f"{ours:<28}{result['ours']:>10.1f}")
    print(f"{'voxceleb_trainer-style':<28}{result['reference']:>10.1f}")
    print(f"ratio ours / reference: {result['ours'] / result['reference']:.2f}x")
    if args.networks:
        names = list(NETWORKS) if args.networks == "all" else args.networks.split(",")
        print_networks(measure_networks(names, trainfunc=args.trainfunc, groups=args.groups,
                                        per_group=args.per_group, frames=args.frames, steps=args.steps,
                                        repeats=args.repeats, device=args.device, compile=args.compile))


if __name__ == "__main__":
    main()
