"""Training-step throughput: our trainer's step next to one written the way voxceleb_trainer's ``train_network``
does it, on the same network, loss, weights and batches, in the same run.

Default shape: ResNetSE34L + angleproto, 64 speakers x 2 utterances x 200 frames (issue: "bench_train").
``--networks all`` (every network plugin, ``plugins.choices("models")``) or ``--networks NAME,...`` adds a row per
network at its own defaults (front end, nOut, pooling, width), same shape and loss: its parameters, the GFLOPs of
its forward pass on one 2-s waveform (:func:`gflops`: torch's ``FlopCounterMode``, 2 FLOPs per multiply-add, the
FFTs of a front end not counted), our step's utterances/s (forward, loss, backward, optimizer) and its ratio to
ResNetSE34L's, which is measured in the same process whether listed or not. ``benchmarks/bench_train_gpu.py`` runs
the original README's mp_balance shape on a GPU; ``benchmarks/bench_inference.py --rtf`` the inference side.

    python -m benchmarks.bench_train                          # the default shape
    OMP_NUM_THREADS=1 python -m benchmarks.bench_train --networks all --groups 4 --frames 100 --steps 1
    python -m benchmarks.bench_train --mixedprec bf16         # our step in bfloat16 against the float32 reference
"""

import argparse
import copy
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from spknet import SAMPLE_RATE, plugins
from spknet.data import max_audio_samples
from spknet.errors import SpeakerNetError
from spknet.model import SpeakerNet
from spknet.specs import ModelSpec, TrainingSpec
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


BASELINE = "ResNetSE34L"      # the ratios' denominator: the original's network


def network_names(choice: str) -> list[str]:
    """``all``: every network plugin; else the comma-separated names, each checked against the plugins."""
    available = plugins.choices("models")
    if choice == "all":
        return available
    names = [name.strip() for name in choice.split(",") if name.strip()]
    unknown = [name for name in names if name not in available]
    if unknown or not names:
        raise SpeakerNetError(f"unknown network(s) {', '.join(unknown) or repr(choice)}; choices: all, "
                              f"{', '.join(available)}")
    return names


def embedder(name: str) -> torch.nn.Module:
    """The network ``name`` at its own defaults, without a loss head, in eval mode."""
    return SpeakerNet.build(model=name, with_loss=False).__S__.eval()


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def gflops(module: torch.nn.Module, seconds: float = 2.0) -> float:
    """GFLOPs of one forward pass on one waveform of ``seconds`` (eval mode), as torch's ``FlopCounterMode``
    counts them: 2 FLOPs per multiply-add of the convolutions and matrix products; elementwise work, the
    normalisations and the FFTs of a front end are not counted."""
    wave = torch.randn(1, int(seconds * SAMPLE_RATE)) * 3000
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(wave)
    return counter.get_total_flops() / 1e9


def measure_networks(names, **shape) -> dict:
    """Per network: parameters, GFLOPs of 2 s, front end, and our step's utterances/s at its own defaults (same
    shape and loss), with the ratio to ResNetSE34L's step, measured first in this process."""
    rates = {name: measure(model=name, nOut=None, reference=False, **shape)["ours"]
             for name in dict.fromkeys([BASELINE, *names])}
    rows = {}
    for name in names:
        net = embedder(name)
        rows[name] = {"frontend": ModelSpec(model=name).resolved().frontend or "logmel",
                      "parameters": parameters(net), "gflops": gflops(net), "utt_per_s": rates[name],
                      "ratio": rates[name] / rates[BASELINE]}
    return rows


def print_networks(rows: dict) -> None:
    print(f"{'network (our step)':<22}{'front end':>18}{'parameters':>13}{'GFLOPs 2 s':>12}{'utt/s':>9}"
          f"{'x ' + BASELINE:>15}")
    for name, row in rows.items():
        print(f"{name:<22}{row['frontend']:>18}{row['parameters']:>13,}{row['gflops']:>12.2f}{row['utt_per_s']:>9.2f}"
              f"{row['ratio']:>14.3f}x")


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
                        help="comma-separated networks, or 'all' (every network plugin), to measure as well")
    args = parser.parse_args(argv)
    try:
        names = network_names(args.networks) if args.networks else []
    except SpeakerNetError as error:
        parser.error(str(error))
    result = measure(args.trainfunc, args.groups, args.per_group, args.frames, args.steps, args.repeats,
                     args.device, mixedprec=args.mixedprec, compile=args.compile)
    print(f"device {args.device}, threads {torch.get_num_threads()}, {args.trainfunc}, "
          f"{args.groups} x {args.per_group} x {args.frames} frames, {args.steps} steps, best of {args.repeats}")
    print(f"{'step':<28}{'utt/s':>10}")
    ours = f"ours ({args.mixedprec})" if args.mixedprec else "ours"
    print(f"{ours:<28}{result['ours']:>10.1f}")
    print(f"{'voxceleb_trainer-style':<28}{result['reference']:>10.1f}")
    print(f"ratio ours / reference: {result['ours'] / result['reference']:.2f}x")
    if names:
        print("GFLOPs: one forward pass on one 2-s waveform, eval mode, 2 FLOPs per multiply-add (torch's "
              "FlopCounterMode; front-end FFTs not counted)")
        print_networks(measure_networks(names, trainfunc=args.trainfunc, groups=args.groups,
                                        per_group=args.per_group, frames=args.frames, steps=args.steps,
                                        repeats=args.repeats, device=args.device, compile=args.compile))


if __name__ == "__main__":
    main()
