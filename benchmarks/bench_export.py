"""Every network exported, front end inside, and checked against PyTorch: the table of docs/inference.md.

For each network plugin (``--networks all``, or a comma-separated list), a randomly initialised network with its
own default options (``--channels`` narrows the ones that have the option, for a quick run) is exported with
:func:`spknet.export.export_program` (torch.export; the program the ``torch_export`` format saves) and
:func:`spknet.export.onnx_bytes` (the ONNX file, run by onnxruntime), then both are run on random waveforms of
``--lengths`` seconds, two per batch. Printed per network: the front end, the parameters, the shortest input the
program takes, and the lowest cosine similarity of each export's embeddings to PyTorch's (the issue's bar is
0.99999), with the export times. A network an exporter cannot take is printed with the exporter's error, not left
out.

    python -m benchmarks.bench_export                              # every network, 1.2 / 2.5 / 4.3 s
    python -m benchmarks.bench_export --networks ResNetSE34L,CAMPPlus --lengths 1,3
"""

import argparse
import time

import numpy as np
import torch

from spknet import plugins
from spknet.constants import SAMPLE_RATE
from spknet.errors import SpeakerNetError
from spknet.export import export_program, input_scale, min_samples, onnx_bytes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", default="all", help="'all' or plugin names, comma-separated")
    parser.add_argument("--lengths", default="1.2,2.5,4.3", help="seconds of the test waveforms, comma-separated")
    parser.add_argument("--channels", type=int, default=None, help="narrow the networks that take --channels")
    parser.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True, help="also export ONNX")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def network_names(value: str) -> list[str]:
    available = plugins.choices("models")
    names = available if value == "all" else [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in available]
    if unknown:
        raise SystemExit(f"bench_export: unknown network(s) {', '.join(unknown)}; choices: {', '.join(available)}")
    return names


def build(name: str, channels: int | None) -> tuple[torch.nn.Module, dict]:
    """The network (eval mode) and the config the export records (its defaults, float input)."""
    options = plugins.model_defaults(name)
    if channels is not None and "channels" in options:
        options["channels"] = channels
    network = plugins.load("models", name)(**options).eval()
    return network, {**options, "model": name, "audio_scale": "float"}


def cosines(reference: torch.Tensor, other) -> float:
    other = torch.as_tensor(np.asarray(other))
    return float(torch.nn.functional.cosine_similarity(reference, other, dim=1).min())


def check_network(name: str, args, lengths: list[float]) -> dict:
    torch.manual_seed(args.seed)
    network, config = build(name, args.channels)
    row = {"network": name, "frontend": config.get("frontend", "logmel"),
           "parameters": sum(p.numel() for p in network.parameters())}
    waves = [torch.rand(2, int(seconds * SAMPLE_RATE)) * 0.6 - 0.3 for seconds in lengths]
    with torch.no_grad():
        expected = [network(wave * input_scale(config)) for wave in waves]
    start = time.perf_counter()
    try:
        program = export_program(network, config, name)
    except SpeakerNetError as error:
        return {**row, "error": f"torch.export: {error}"}
    row["export_s"] = time.perf_counter() - start
    row["min_samples"] = min_samples(program, name)
    module = program.module()
    try:
        with torch.no_grad():
            row["torch_export"] = min(cosines(reference, module(wave)) for reference, wave in zip(expected, waves))
    except Exception as error:      # a guard the program was exported with, failing on one of the lengths
        return {**row, "error": f"torch.export program: {type(error).__name__}: {str(error)[:120]}"}
    if args.onnx:
        import onnxruntime

        start = time.perf_counter()
        try:
            data = onnx_bytes(program, {}, name)
        except SpeakerNetError as error:
            return {**row, "error": f"ONNX: {error}"}
        row["onnx_s"] = time.perf_counter() - start
        try:
            session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
            row["onnx"] = min(cosines(reference, session.run(None, {"waveform": wave.numpy()})[0])
                              for reference, wave in zip(expected, waves))
        except Exception as error:  # onnxruntime refusing the graph or one of the lengths
            return {**row, "error": f"ONNX: {type(error).__name__}: {str(error)[:120]}"}
    return row


def print_row(row: dict) -> None:
    if "error" in row:
        print(f"| {row['network']} | {row['frontend']} | {row['parameters']:,} | - | {row['error']} | | |", flush=True)
        return
    onnx = f"{row['onnx']:.7f} ({row['onnx_s']:.0f} s)" if "onnx" in row else "-"
    print(f"| {row['network']} | {row['frontend']} | {row['parameters']:,} | {row['min_samples']} | "
          f"{row['torch_export']:.7f} ({row['export_s']:.0f} s) | {onnx} |", flush=True)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    lengths = [float(value) for value in args.lengths.split(",")]
    print(f"random waveforms of {', '.join(f'{s:g}' for s in lengths)} s, two per batch; lowest cosine to PyTorch "
          f"(export time)")
    print("| network | front end | parameters | min samples | torch.export | ONNX (onnxruntime) |")
    print("| --- | --- | ---: | ---: | --- | --- |")
    rows = []
    for name in network_names(args.networks):
        rows.append(check_network(name, args, lengths))
        print_row(rows[-1])
    return rows


if __name__ == "__main__":
    main()
