"""The ``wespeaker`` and ``pyannote`` entries of :mod:`spknet.importing`: WeSpeaker's ResNets, CAM++, ECAPA-TDNNs,
SimAM-ResNets and ReDimNets, and pyannote's re-packaged WeSpeaker ResNets."""

import os

import torch

from spknet.errors import SpeakerNetError
from spknet.importing.base import Imported, Toolkit, check_agrees, count_blocks, register, tensor_state
from spknet.models._redimnet import CONFIGS as REDIMNET_CONFIGS
from spknet.models._redimnet import distances as redimnet_distances
from spknet.models._redimnet import read_sizes as redimnet_sizes
from spknet.models._redimnet import stage_count as redimnet_stages
from spknet.models._wespeaker_ecapa import AGGREGATED as ECAPA_AGGREGATED
from spknet.models._wespeaker_ecapa import NETWORKS as ECAPA_NETWORKS
from spknet.models._wespeaker_simam import NETWORKS as SIMAM_NETWORKS
from spknet.specs import ModelSpec

# ----------------------------------------------------------------------------------------------------------------
# WeSpeaker
# ----------------------------------------------------------------------------------------------------------------

# WeSpeaker's ResNets by depth (wespeaker/models/resnet.py): bottleneck blocks or not, blocks per stage
RESNET_DEPTHS = {18: (False, (2, 2, 2, 2)), 34: (False, (3, 4, 6, 3)), 50: (True, (3, 4, 6, 3)),
                 101: (True, (3, 4, 23, 3)), 152: (True, (3, 8, 36, 3)), 221: (True, (6, 16, 48, 3)),
                 293: (True, (10, 20, 64, 3))}
# WeSpeaker's ReDimNetB0() ... ReDimNetB6() (wespeaker/models/redimnet.py), SpeakerNet's plugins of the same names
REDIMNETS = tuple(f"ReDimNet{config}" for config in REDIMNET_CONFIGS)
# WeSpeaker's ECAPA_TDNN_c512 ... ECAPA_TDNN_GLOB_c1024 (wespeaker/models/ecapa_tdnn.py), plugins of the same names
ECAPAS = tuple(ECAPA_NETWORKS)
# WeSpeaker's SimAM_ResNet34_ASP and SimAM_ResNet100_ASP (wespeaker/models/samresnet.py), plugins of the same names
SIMAMS = tuple(SIMAM_NETWORKS)
WESPEAKER_MODELS = tuple(f"ResNet{depth}" for depth in RESNET_DEPTHS) + ("CAMPPlus",) + ECAPAS + SIMAMS + REDIMNETS
# the model_args each supports, with the values SpeakerNet's network computes (None: any value, read as a spec field)
WESPEAKER_ARGS = {
    "resnet": {"feat_dim": None, "embed_dim": None, "pooling_func": "TSTP", "two_emb_layer": False},
    "CAMPPlus": {"feat_dim": None, "embed_dim": None, "pooling_func": "TSTP", "growth_rate": 32, "bn_size": 4,
                 "init_channels": 128, "config_str": "batchnorm-relu"},
    "redimnet": {"feat_dim": None, "embed_dim": None, "pooling_func": "ASTP", "two_emb_layer": False},
    "ecapa": {"feat_dim": None, "embed_dim": None, "pooling_func": None, "emb_bn": False},
    # a SimAM-ResNet's own argument names; its dropout acts in training only and has no weights: any value
    "simam": {"in_planes": None, "embed_dim": None, "acoustic_dim": None, "dropout": None},
}
# the pooling each computes, as SpeakerNet's encoder_type names it (WeSpeaker's ASTP, with or without global
# context: ASP, the ECAPA's model name says which; a SimAM-ResNet's own attentive statistics, WeSpeaker's ASP: ASP)
WESPEAKER_POOLING = {"resnet": "TSTP", "CAMPPlus": "TSTP", "redimnet": "ASP", "ecapa": "ASP", "simam": "ASP"}
# the fbank and CMVN WeSpeaker evaluates with (wespeaker/bin/extract.py: dither 0, cmvn with norm_mean only)
WESPEAKER_FBANK = {"frame_length": 25, "frame_shift": 10}
WESPEAKER_HEAD = "projection."
# where in the weights each option a config gives is read
WESPEAKER_HINTS = {"model": "keys layer*/head.*/backbone.* (the network)",
                   "nOut": "key seg_1.weight / xvector.dense.*", "n_mels": "first layer's input width"}
ECAPA_HINTS = {"model": "keys layer1.conv.weight (C) and pool.linear1.weight (GLOB: its input width)",
               "nOut": "key linear.weight", "n_mels": "key layer1.conv.weight's input width",
               "pooling_func": "keys pool.linear1.weight and pool.linear2.weight (ASTP's attention)"}
SIMAM_HINTS = {"model": "keys front.layer1-4.* (blocks per stage)", "nOut": "key bottleneck.weight",
               "n_mels": "key pooling.attention.0.weight's input width (in_planes x n_mels)",
               "channels": "key front.conv1.weight (in_planes)"}
AUDIO_SCALE = "int16"           # WeSpeaker scales float waveforms by 1 << 15 before its fbank: int16 samples


def family(model: str) -> str:
    """The key of :data:`WESPEAKER_ARGS` and :data:`WESPEAKER_POOLING` for a WeSpeaker model name."""
    if model == "CAMPPlus":
        return "CAMPPlus"
    if model in SIMAMS:
        return "simam"
    return "redimnet" if model in REDIMNETS else "ecapa" if model in ECAPAS else "resnet"


def nearest_redimnet(state: dict, path: str) -> dict:
    """The ReDimNet configuration a state dict is, or else comes nearest to (the fewest keys missing, unused or
    misshapen, among those with its number of stages), so that the strict load names the key at fault."""
    for key, dims in (("backbone.stem.0.weight", 4), ("backbone.inputs_weights.1", 4), ("seg_1.weight", 2)):
        if key not in state or state[key].dim() != dims:
            raise SpeakerNetError(f"{path}: key {key} of a WeSpeaker ReDimNet (keys backbone.*) is missing or "
                                  f"misshapen: its width, bands and embedding size are read there")
    sizes = redimnet_sizes(state)
    distances = redimnet_distances(state, sizes)
    if not distances:
        raise SpeakerNetError(f"{path}: a WeSpeaker ReDimNet (keys backbone.*) with {redimnet_stages(state)} stages "
                              f"(keys backbone.stage*), which none of {', '.join(REDIMNETS)} has at "
                              f"{sizes['channels']} channels and {sizes['n_mels']} bands")
    return {"model": f"ReDimNet{min(distances, key=distances.get)}", **sizes}


def network_shape(state: dict, path: str, key: str, dims: int,
                  network: str = "ECAPA-TDNN (keys layer1-4.*, pool.*)") -> torch.Size:
    """The shape of ``state[key]``, a tensor of ``dims`` dimensions, or an error naming the key (and ``network``,
    what the keys say the file is)."""
    if key not in state or state[key].dim() != dims:
        raise SpeakerNetError(f"{path}: key {key} of a WeSpeaker {network} is missing or misshapen: the network is "
                              f"read there")
    return state[key].shape


def wespeaker_ecapa(state: dict, path: str) -> dict:
    """Which ECAPA-TDNN a WeSpeaker state dict with ``layer2.se_res2block.*`` is: C from the first conv's outputs
    (512 or 1024), GLOB from the attention's input width (3 x 1536: the utterance's statistics beside each frame)."""
    if "bn2.weight" in state:
        raise SpeakerNetError(f"{path}: key bn2.weight: an ECAPA-TDNN with emb_bn True, which SpeakerNet does not "
                              f"carry (WeSpeaker's published ECAPA-TDNNs have none)")
    if "pool.linear1.weight" not in state:
        raise SpeakerNetError(f"{path}: key pool.linear1.weight is missing: an ECAPA-TDNN whose pooling is not ASTP, "
                              f"which SpeakerNet does not import (WeSpeaker's published ECAPA-TDNNs pool with ASTP)")
    first = network_shape(state, path, "layer1.conv.weight", 3)
    attention_inputs = network_shape(state, path, "pool.linear1.weight", 3)[1]
    widths = {ECAPA_AGGREGATED: False, 3 * ECAPA_AGGREGATED: True}
    if attention_inputs not in widths:
        raise SpeakerNetError(f"{path}: key pool.linear1.weight takes {attention_inputs} channels; WeSpeaker's "
                              f"ECAPA-TDNN's ASTP takes {ECAPA_AGGREGATED} ({3 * ECAPA_AGGREGATED} with global "
                              f"context)")
    found = (first[0], widths[attention_inputs])
    model = next((name for name, layout in ECAPA_NETWORKS.items() if layout == found), None)
    if model is None:
        raise SpeakerNetError(f"{path}: key layer1.conv.weight: an ECAPA-TDNN of {first[0]} channels, which none of "
                              f"{', '.join(ECAPAS)} has (512 or 1024)")
    return {"model": model, "nOut": network_shape(state, path, "linear.weight", 2)[0], "n_mels": first[1],
            "pooling_func": "ASTP"}


def wespeaker_simam(state: dict, path: str) -> dict:
    """Which SimAM-ResNet a WeSpeaker state dict with ``front.conv1.weight`` is: ResNet34 or ResNet100 from the
    blocks per stage, in_planes from the stem's outputs, n_mels from the rows the pooling's attention takes
    (in_planes x 8 channels x n_mels / 8 bands), nOut from ``bottleneck.weight``."""
    network = "SimAM-ResNet (keys front.*, pooling.attention.*, bottleneck.*)"
    in_planes = network_shape(state, path, "front.conv1.weight", 4, network)[0]
    rows = network_shape(state, path, "pooling.attention.0.weight", 3, network)[1]
    nOut = network_shape(state, path, "bottleneck.weight", 2, network)[0]
    if rows % (8 * in_planes):
        raise SpeakerNetError(f"{path}: key pooling.attention.0.weight takes {rows} rows, not a multiple of the "
                              f"{8 * in_planes} channels of the last stage (8 x in_planes {in_planes}, key "
                              f"front.conv1.weight)")
    blocks = tuple(count_blocks(state, f"front.layer{stage}.") for stage in (1, 2, 3, 4))
    model = next((name for name, known in SIMAM_NETWORKS.items() if known == blocks), None)
    if model is None:
        raise SpeakerNetError(f"{path}: a WeSpeaker SimAM-ResNet with blocks {'-'.join(map(str, blocks))} per stage "
                              f"(keys front.layer1-4), which is none of {', '.join(SIMAMS)} ("
                              f"{', '.join('-'.join(map(str, known)) for known in SIMAM_NETWORKS.values())})")
    return {"model": model, "nOut": nOut, "n_mels": 8 * (rows // (8 * in_planes)), "channels": in_planes}


def wespeaker_network(state: dict, path: str) -> dict:
    """What the keys and shapes of a WeSpeaker state dict say: ``model``, ``nOut``, ``n_mels`` (and ``channels``
    for a ResNet, a SimAM-ResNet (its in_planes) or a ReDimNet, ``pooling_func`` for an ECAPA-TDNN); an error for a
    network SpeakerNet does not have."""
    if "seg_2.weight" in state and ("conv1.weight" in state or "backbone.stem.0.weight" in state):
        kind = "ResNet" if "conv1.weight" in state else "ReDimNet"
        raise SpeakerNetError(f"{path}: key seg_2.weight: a {kind} with two_emb_layer True, which SpeakerNet does "
                              f"not carry (WeSpeaker's published {kind}s have one embedding layer)")
    if "backbone.stem.0.weight" in state:
        return nearest_redimnet(state, path)
    if "layer2.se_res2block.0.conv.weight" in state:
        return wespeaker_ecapa(state, path)
    if "conv1.weight" in state and "seg_1.weight" in state:
        bottleneck = "layer1.0.conv3.weight" in state
        layout = (bottleneck, tuple(count_blocks(state, f"layer{stage}.") for stage in (1, 2, 3, 4)))
        depth = next((depth for depth, known in RESNET_DEPTHS.items() if known == layout), None)
        if depth is None:
            raise SpeakerNetError(f"{path}: a WeSpeaker ResNet with {'bottleneck' if bottleneck else 'basic'} blocks "
                                  f"{'-'.join(map(str, layout[1]))} per stage (keys layer1-4), which is none of "
                                  f"ResNet{', ResNet'.join(map(str, RESNET_DEPTHS))}")
        channels = state["conv1.weight"].shape[0]
        rows = state["seg_1.weight"].shape[1] // 2 // (channels * 8 * (4 if bottleneck else 1))
        return {"model": f"ResNet{depth}", "nOut": state["seg_1.weight"].shape[0], "n_mels": 8 * rows,
                "channels": channels}
    if "head.conv1.weight" in state and "xvector.tdnn.linear.weight" in state and \
            "xvector.dense.linear.weight" in state:
        return {"model": "CAMPPlus", "nOut": state["xvector.dense.linear.weight"].shape[0],
                "n_mels": 8 * (state["xvector.tdnn.linear.weight"].shape[1] // state["head.conv1.weight"].shape[0])}
    if "front.conv1.weight" in state:
        return wespeaker_simam(state, path)
    raise SpeakerNetError(f"{path}: not a WeSpeaker network SpeakerNet has ({', '.join(WESPEAKER_MODELS)}): no "
                          f"conv1.weight + seg_1.weight (ResNet), head.conv1.weight + xvector.* (CAM++), "
                          f"layer2.se_res2block.* (ECAPA-TDNN), front.conv1.weight (SimAM-ResNet) or "
                          f"backbone.stem.0.weight (ReDimNet); its keys start {', '.join(sorted(state)[:3])}")


def _config_value(config: dict, config_path: str, *keys, default=None):
    value = config
    for key in keys:
        if not isinstance(value, dict):
            raise SpeakerNetError(f"{config_path}: {'.'.join(keys[:-1])} is not a mapping")
        value = value.get(key, default if key == keys[-1] else {})
    return value


def wespeaker_config(config: dict, config_path: str) -> dict:
    """The network that WeSpeaker's ``config.yaml`` describes (``model``, ``model_args``), checked against what
    SpeakerNet computes: WeSpeaker's fbank frontend, 25-ms frames every 10 ms, 16 kHz, mean-only CMVN."""
    model = config.get("model")
    if model not in WESPEAKER_MODELS:
        raise SpeakerNetError(f"{config_path}: key model: {model!r} is not a WeSpeaker network SpeakerNet has "
                              f"({', '.join(WESPEAKER_MODELS)})")
    args = _config_value(config, config_path, "model_args") or {}
    supported = WESPEAKER_ARGS[family(model)]
    for key, value in args.items():
        if key not in supported:
            raise SpeakerNetError(f"{config_path}: key model_args.{key}: not an option of SpeakerNet's {model}")
        if supported[key] is not None and value != supported[key]:
            raise SpeakerNetError(f"{config_path}: key model_args.{key}: {value!r}; SpeakerNet's {model} computes "
                                  f"{supported[key]!r} only")
    frontend = _config_value(config, config_path, "dataset_args", "frontend", default="fbank")
    if frontend != "fbank":
        raise SpeakerNetError(f"{config_path}: key dataset_args.frontend: {frontend!r}; SpeakerNet imports "
                              f"WeSpeaker's fbank models only")
    for key, expected in WESPEAKER_FBANK.items():
        value = _config_value(config, config_path, "dataset_args", "fbank_args", key, default=expected)
        if value != expected:
            raise SpeakerNetError(f"{config_path}: key dataset_args.fbank_args.{key}: {value}; SpeakerNet's "
                                  f"kaldi_fbank has {expected}")
    rate = _config_value(config, config_path, "dataset_args", "resample_rate", default=16000)
    if rate != 16000:
        raise SpeakerNetError(f"{config_path}: key dataset_args.resample_rate: {rate}; SpeakerNet's models take 16 kHz")
    if _config_value(config, config_path, "dataset_args", "cmvn", default=True) is not True or \
            _config_value(config, config_path, "dataset_args", "cmvn_args", "norm_var", default=False) or \
            _config_value(config, config_path, "dataset_args", "cmvn_args", "norm_mean", default=True) is not True:
        raise SpeakerNetError(f"{config_path}: key dataset_args.cmvn_args: SpeakerNet's kaldi_fbank subtracts the "
                              f"utterance mean only (cmvn True, norm_mean True, norm_var False)")
    bins = _config_value(config, config_path, "dataset_args", "fbank_args", "num_mel_bins")
    width = feature_argument(model)
    n_mels = args.get(width, bins)
    if bins is not None and n_mels != bins:
        raise SpeakerNetError(f"{config_path}: key model_args.{width}: {n_mels}, but dataset_args.fbank_args."
                              f"num_mel_bins is {bins}")
    described = {"model": model, "nOut": args.get("embed_dim"), "n_mels": n_mels}
    if family(model) == "ecapa":        # an ECAPA-TDNN's pooling is read from its weights (pool.*: ASTP's)
        described["pooling_func"] = args.get("pooling_func")
    if family(model) == "simam":        # in_planes, read from its weights (front.conv1.weight)
        described["channels"] = args.get("in_planes")
    return {key: value for key, value in described.items() if value is not None}


def feature_argument(model: str) -> str:
    """The ``model_args`` key of the fbank width: WeSpeaker's SimAM-ResNets name it ``acoustic_dim``."""
    return "acoustic_dim" if family(model) == "simam" else "feat_dim"


def wespeaker_config_keys(config: dict) -> dict:
    """The config key each option of :func:`wespeaker_config` is read from, for the message of a contradiction."""
    args = config.get("model_args") or {}
    width = feature_argument(config.get("model"))
    return {"model": "model", "nOut": "model_args.embed_dim", "pooling_func": "model_args.pooling_func",
            "channels": "model_args.in_planes",
            "n_mels": f"model_args.{width}" if width in args else "dataset_args.fbank_args.num_mel_bins"}


def wespeaker_spec(network: dict) -> ModelSpec:
    """The spec of a WeSpeaker network: its Kaldi fbanks (Hamming window, as WeSpeaker's training and extraction
    compute them) on int16-scale samples, its pooling (TSTP; ASTP for an ECAPA-TDNN or a ReDimNet, ASP for a
    SimAM-ResNet: SpeakerNet's ASP either way)."""
    return ModelSpec(model=network["model"], nOut=network["nOut"], n_mels=network["n_mels"],
                     encoder_type=WESPEAKER_POOLING[family(network["model"])],
                     window="hamming", channels=network.get("channels"), audio_scale=AUDIO_SCALE,
                     frontend="kaldi_fbank")


def read_wespeaker(path: str, loaded, config: dict | None, config_path: str | None) -> Imported:
    state = loaded
    for key in ("state_dict", "model"):     # what load_checkpoint and average_model.py also accept
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    state = tensor_state(path, state, "WeSpeaker")
    head = {key: value for key, value in state.items() if key.startswith(WESPEAKER_HEAD)}
    body = {key: value for key, value in state.items() if not key.startswith(WESPEAKER_HEAD)}
    if not body:
        raise SpeakerNetError(f"{path}: only a classifier head ({', '.join(head)}), no network")
    network = wespeaker_network(body, path)
    notes = []
    if config is not None:
        described = wespeaker_config(config, config_path)
        hints = {"ecapa": ECAPA_HINTS, "simam": SIMAM_HINTS}.get(family(network["model"]), WESPEAKER_HINTS)
        check_agrees(path, network, described, hints, config_path, config_keys=wespeaker_config_keys(config))
        notes.append(f"config {os.path.basename(config_path)}: model {described['model']}, as the keys say")
    return Imported(wespeaker_spec(network), body, dropped=head, notes=notes)


register(Toolkit("wespeaker", read_wespeaker, "avg_model.pt (a state dict) with its config.yaml"))


# ----------------------------------------------------------------------------------------------------------------
# pyannote: WeSpeaker's ResNets re-packaged
# ----------------------------------------------------------------------------------------------------------------

PYANNOTE_KEY = "pyannote.audio"
PYANNOTE_MODULE = "pyannote.audio.models.embedding.wespeaker"
PYANNOTE_CLASSES = {f"WeSpeakerResNet{depth}": f"ResNet{depth}" for depth in (34, 152, 221, 293)}
PYANNOTE_PREFIX = "resnet."
# pyannote's fbank options (BaseWeSpeakerResNet) and what SpeakerNet's kaldi_fbank computes
PYANNOTE_FBANK = {"sample_rate": 16000, "num_channels": 1, "frame_length": 25, "frame_shift": 10,
                  "round_to_power_of_two": True, "snip_edges": True, "use_energy": False, "fbank_centering_span": None}
PYANNOTE_WINDOWS = {"hamming": "hamming", "povey": "povey", "hanning": "hann"}


def read_pyannote(path: str, loaded, config: dict | None, config_path: str | None) -> Imported:
    if not isinstance(loaded, dict) or PYANNOTE_KEY not in loaded or not isinstance(loaded.get("state_dict"), dict):
        if isinstance(loaded, dict) and loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise SpeakerNetError(f"{path}: not a pyannote checkpoint (key {PYANNOTE_KEY} missing): a bare state "
                                  f"dict; a WeSpeaker one? (--from wespeaker)")
        missing = "state_dict" if isinstance(loaded, dict) and PYANNOTE_KEY in loaded else PYANNOTE_KEY
        raise SpeakerNetError(f"{path}: not a pyannote checkpoint (key {missing} missing)")
    architecture = loaded[PYANNOTE_KEY].get("architecture") or {} if isinstance(loaded[PYANNOTE_KEY], dict) else {}
    module, name = architecture.get("module"), architecture.get("class")
    if module != PYANNOTE_MODULE or name not in PYANNOTE_CLASSES:
        raise SpeakerNetError(f"{path}: key {PYANNOTE_KEY}.architecture: {module}.{name} is not one of WeSpeaker's "
                              f"ResNets ({PYANNOTE_MODULE}.{', '.join(PYANNOTE_CLASSES)}), the pyannote embedding "
                              f"networks SpeakerNet imports")
    hyper = loaded.get("hyper_parameters") or {}
    for key, expected in PYANNOTE_FBANK.items():
        if key in hyper and hyper[key] != expected:
            raise SpeakerNetError(f"{path}: key hyper_parameters.{key}: {hyper[key]!r}; SpeakerNet's kaldi_fbank "
                                  f"computes {expected!r}")
    window = hyper.get("window_type", "hamming")
    if window not in PYANNOTE_WINDOWS:
        raise SpeakerNetError(f"{path}: key hyper_parameters.window_type: {window!r}; SpeakerNet's kaldi_fbank has "
                              f"{', '.join(PYANNOTE_WINDOWS)}")
    state = loaded["state_dict"]
    foreign = [key for key in state if not key.startswith(PYANNOTE_PREFIX)]
    if foreign:
        raise SpeakerNetError(f"{path}: key state_dict.{foreign[0]} is not part of {name}'s ResNet (keys "
                              f"{PYANNOTE_PREFIX}*)")
    body = {key[len(PYANNOTE_PREFIX):]: value for key, value in state.items()}
    network = wespeaker_network(body, path)
    if network["model"] != PYANNOTE_CLASSES[name]:
        raise SpeakerNetError(f"{path}: the architecture contradicts the weights: {PYANNOTE_KEY}.architecture says "
                              f"{name}, the keys {PYANNOTE_PREFIX}layer* say {network['model']}")
    if "num_mel_bins" in hyper and hyper["num_mel_bins"] != network["n_mels"]:
        raise SpeakerNetError(f"{path}: key hyper_parameters.num_mel_bins: {hyper['num_mel_bins']}, but the weights "
                              f"({PYANNOTE_PREFIX}seg_1.weight) take {network['n_mels']} bins")
    spec = ModelSpec(model=network["model"], nOut=network["nOut"], n_mels=network["n_mels"], encoder_type="TSTP",
                     window=PYANNOTE_WINDOWS[window], channels=network["channels"], audio_scale=AUDIO_SCALE,
                     frontend="kaldi_fbank")
    notes = [f"pyannote {name} (WeSpeaker's ResNet{network['model'][6:]}); its pooling's standard deviation has no "
             f"1e-7 under the root, SpeakerNet's has WeSpeaker's"]
    return Imported(spec, body, notes=notes, origin={key[len(PYANNOTE_PREFIX):]: key for key in state})


register(Toolkit("pyannote", read_pyannote, "pytorch_model.bin (a Lightning checkpoint of WeSpeakerResNet34, ...)",
                 records=("pyannote.audio.core.task.Specifications", "pyannote.audio.core.task.Problem",
                          "pyannote.audio.core.task.Resolution", "torch.torch_version.TorchVersion"),
                 mappings=("lightning.fabric.utilities.data.AttributeDict",
                           "pytorch_lightning.utilities.parsing.AttributeDict"),
                 takes_config=False))
