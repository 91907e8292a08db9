"""The ``3dspeaker`` entry of :mod:`spknet.importing`: 3D-Speaker's CAM++ and ERes2NetV2, a bare state dict per
model id."""

import os

from spknet.errors import SpeakerNetError
from spknet.importing.base import Imported, Toolkit, check_agrees, count_blocks, read_config, register, tensor_state
from spknet.specs import ModelSpec

# ----------------------------------------------------------------------------------------------------------------
# 3D-Speaker
# ----------------------------------------------------------------------------------------------------------------

# 3D-Speaker's published models (``python inference.py import --from 3dspeaker FILE [--config MODEL_ID | NETWORK |
# CONF.yaml]``).
#
# 3D-Speaker publishes one bare state dict per model id (``campplus_cn_common.bin``, ``pretrained_eres2netv2.ckpt``,
# ...; its training saves the same, ``embedding_model.ckpt``, beside a separate ``classifier.ckpt``), and its inference
# script (``speakerlab/bin/infer_sv.py``) picks the network's class and arguments from the model id. Here the keys
# and shapes say which network it is (CAM++, ERes2NetV2, or ERes2NetV2 w24s4ep4, and their sizes); ``--config``, when
# given, must agree with them, and is one of:
#
# - a model id as published (:data:`THREEDSPEAKER_MODEL_IDS`; ``damo/`` is read as ``iic/``, as infer_sv.py does);
# - a network's name: ours (``CAMPPlus3D``, ``ERes2NetV2``, ``ERes2NetV2w24s4ep4``) or 3D-Speaker's class name;
# - a 3D-Speaker training config (``conf/*.yaml``), read as data: its ``embedding_model`` (``obj`` and ``args``,
#   ``<name>`` references resolved from the config's top level) and ``feature_extractor`` (FBank, 16 kHz, mean
#   subtracted).
#
# Every 3D-Speaker model computes 80 Kaldi fbanks (``povey`` window, no dither at inference) on float waveforms in
# [-1, 1] with the utterance mean subtracted (``speakerlab.process.processor.FBank(80, 16000, mean_nor=True)``): the
# spec records ``frontend kaldi_fbank``, ``window povey``, ``audio_scale float``.

# speakerlab/bin/infer_sv.py's supports: model id -> (our network, embedding size)
THREEDSPEAKER_MODEL_IDS = {
    "iic/speech_campplus_sv_zh-cn_16k-common": ("CAMPPlus3D", 192),
    "iic/speech_campplus_sv_zh_en_16k-common_advanced": ("CAMPPlus3D", 192),
    "iic/speech_campplus_sv_en_voxceleb_16k": ("CAMPPlus3D", 512),
    "iic/speech_eres2netv2_sv_zh-cn_16k-common": ("ERes2NetV2", 192),
    "iic/speech_eres2netv2w24s4ep4_sv_zh-cn_16k-common": ("ERes2NetV2w24s4ep4", 192),
}
# the ids infer_sv.py also serves, with networks SpeakerNet does not carry
THREEDSPEAKER_OTHER_IDS = {
    "iic/speech_eres2net_sv_zh-cn_16k-common": "ERes2Net (huge)",
    "iic/speech_eres2net_base_200k_sv_zh-cn_16k-common": "ERes2Net (base)",
    "iic/speech_eres2net_sv_en_voxceleb_16k": "ERes2Net",
    "iic/speech_eres2net_base_sv_zh-cn_3dspeaker_16k": "ERes2Net (base)",
    "iic/speech_eres2net_large_sv_zh-cn_3dspeaker_16k": "ERes2Net (large)",
    "iic/speech_ecapa-tdnn_sv_zh-cn_cnceleb_16k": "ECAPA-TDNN (speakerlab's)",
    "iic/speech_ecapa-tdnn_sv_zh-cn_3dspeaker_16k": "ECAPA-TDNN (speakerlab's)",
    "iic/speech_ecapa-tdnn_sv_en_voxceleb_16k": "ECAPA-TDNN (speakerlab's)",
}
THREEDSPEAKER_NETWORKS = ("CAMPPlus3D", "ERes2NetV2", "ERes2NetV2w24s4ep4")
# 3D-Speaker's names of them (class names, case-insensitive) -> ours
THREEDSPEAKER_NAMES = {**{name.lower(): name for name in THREEDSPEAKER_NETWORKS}, "campplus": "CAMPPlus3D",
                       "cam++": "CAMPPlus3D", "eres2netv2_w24s4ep4": "ERes2NetV2w24s4ep4"}
THREEDSPEAKER_CAMPPLUS = "speakerlab.models.campplus.DTDNN.CAMPPlus"
THREEDSPEAKER_ERES2NETV2 = "speakerlab.models.eres2net.ERes2NetV2.ERes2NetV2"
THREEDSPEAKER_FBANK = "speakerlab.process.processor.FBank"
# ERes2NetV2's published (baseWidth, scale, expansion) -> our plugin
ERES2NETV2_VARIANTS = {(26, 2, 2): "ERes2NetV2", (24, 4, 4): "ERes2NetV2w24s4ep4"}
ERES2NETV2_BLOCKS = (3, 4, 6, 3)
# speakerlab's constructor defaults where a config leaves an argument out
ERES2NETV2_DEFAULTS = {"feat_dim": 80, "embedding_size": 192, "m_channels": 64, "baseWidth": 26, "scale": 2,
                       "expansion": 2, "pooling_func": "TSTP", "two_emb_layer": False, "num_blocks": [3, 4, 6, 3]}
THREEDSPEAKER_CAMPPLUS_DEFAULTS = {"feat_dim": 80, "embedding_size": 512, "growth_rate": 32, "bn_size": 4,
                                   "init_channels": 128, "config_str": "batchnorm-relu", "memory_efficient": True}
THREEDSPEAKER_AUDIO_SCALE = "float"           # infer_sv.py feeds torchaudio.load's float samples to its FBank
# where in the weights each option a model id or config gives is read
THREEDSPEAKER_HINTS = {"model": "network (its keys)", "nOut": "last layer (xvector.dense.* / seg_1.weight)",
                       "n_mels": "first layers' shapes", "channels": "key conv1.weight"}
THREEDSPEAKER_WINDOW = "povey"                # torchaudio.compliance.kaldi.fbank's default, which FBank leaves


def threedspeaker_network(state: dict, path: str) -> dict:
    """What the keys and shapes of a 3D-Speaker state dict say: ``model``, ``nOut``, ``n_mels`` (and ``channels``,
    ERes2NetV2's ``m_channels``); an error for anything else, naming what it is when the keys tell."""
    if "head.conv1.weight" in state and "xvector.tdnn.linear.weight" in state and \
            "xvector.dense.linear.weight" in state:
        rows = state["xvector.tdnn.linear.weight"].shape[1] // state["head.conv1.weight"].shape[0]
        return {"model": "CAMPPlus3D", "nOut": state["xvector.dense.linear.weight"].shape[0], "n_mels": 8 * rows}
    if "layer3_ds.weight" in state and "fuse34.local_att.0.weight" in state and "seg_1.weight" in state:
        if "seg_2.weight" in state:
            raise SpeakerNetError(f"{path}: key seg_2.weight: an ERes2NetV2 with two_emb_layer True, which SpeakerNet "
                                  f"does not carry (3D-Speaker's published ERes2NetV2 has one embedding layer)")
        channels = state["conv1.weight"].shape[0]
        scale = count_blocks(state, "layer1.0.convs.")
        expansion = state["layer1.0.conv3.weight"].shape[0] // channels
        width = state["layer1.0.convs.0.weight"].shape[0]
        variant = next((name for (base_width, s, e), name in ERES2NETV2_VARIANTS.items()
                        if (s, e) == (scale, expansion) and width == channels * base_width // 64), None)
        if variant is None:
            raise SpeakerNetError(f"{path}: key layer1.0.convs.*: an ERes2NetV2 with scale {scale}, expansion "
                                  f"{expansion} and {width}-channel groups of {channels}, which is none of the "
                                  f"published (baseWidth, scale, expansion) {', '.join(map(str, ERES2NETV2_VARIANTS))}")
        blocks = tuple(count_blocks(state, f"layer{stage}.") for stage in (1, 2, 3, 4))
        if blocks != ERES2NETV2_BLOCKS:
            raise SpeakerNetError(f"{path}: keys layer1-4: an ERes2NetV2 of {'-'.join(map(str, blocks))} blocks; "
                                  f"SpeakerNet's has 3D-Speaker's {'-'.join(map(str, ERES2NETV2_BLOCKS))}")
        rows = state["seg_1.weight"].shape[1] // (2 * channels * 8 * expansion)
        return {"model": variant, "nOut": state["seg_1.weight"].shape[0], "n_mels": 8 * rows, "channels": channels}
    if set(state) == {"weight"} or (state and all(key.startswith(("blocks.", "weight")) for key in state)):
        raise SpeakerNetError(f"{path}: a 3D-Speaker classifier (keys {', '.join(sorted(state)[:3])}: its training's "
                              f"classifier.ckpt), not an embedding model: import embedding_model.ckpt, or the model "
                              f"id's published file")
    if "conv1.weight" in state and "seg_1.weight" in state:
        raise SpeakerNetError(f"{path}: keys conv1.weight + seg_1.weight without layer3_ds/fuse34: a 3D-Speaker "
                              f"ERes2Net (not V2) or ResNet, which SpeakerNet does not import (it imports "
                              f"{', '.join(THREEDSPEAKER_NETWORKS)})")
    raise SpeakerNetError(f"{path}: not a 3D-Speaker network SpeakerNet has ({', '.join(THREEDSPEAKER_NETWORKS)}): no "
                          f"head.conv1.weight + xvector.* (CAM++) or layer3_ds.weight + fuse34.* (ERes2NetV2); its "
                          f"keys start {', '.join(sorted(state)[:3])}")


def read_threedspeaker_selector(value: str) -> dict:
    """``--config`` for 3D-Speaker: a training config file (read as data), else a model id or a network name."""
    if os.path.isfile(value):
        return {"kind": "config", "config": read_config(value)}
    model_id = "iic/" + value[len("damo/"):] if value.startswith("damo/") else value
    if model_id in THREEDSPEAKER_MODEL_IDS or model_id in THREEDSPEAKER_OTHER_IDS:
        return {"kind": "model id", "id": model_id}
    if value.lower() in THREEDSPEAKER_NAMES:
        return {"kind": "network", "name": THREEDSPEAKER_NAMES[value.lower()]}
    raise SpeakerNetError(f"--config {value}: not a file, nor a 3D-Speaker model id "
                          f"({', '.join(THREEDSPEAKER_MODEL_IDS)}), nor a network name "
                          f"({', '.join(THREEDSPEAKER_NETWORKS)})")


def _threedspeaker_reference(value, config: dict, config_path: str, key: str):
    """A 3D-Speaker config value with its ``<name>`` reference replaced by the config's ``name`` (data only)."""
    if isinstance(value, str) and len(value) > 2 and value[0] == "<" and value[-1] == ">":
        name = value[1:-1]
        if name not in config:
            raise SpeakerNetError(f"{config_path}: key {key}: {value} refers to {name}, which the config lacks")
        return config[name]
    return value


def threedspeaker_config(config: dict, config_path: str) -> dict:
    """The network a 3D-Speaker training config's ``embedding_model`` describes, checked against what SpeakerNet
    computes (its ``feature_extractor`` too)."""
    model = config.get("embedding_model")
    if not isinstance(model, dict) or "obj" not in model:
        raise SpeakerNetError(f"{config_path}: key embedding_model: missing, or without obj (not a 3D-Speaker "
                              f"training config)")
    obj, args = model["obj"], model.get("args") or {}
    if not isinstance(args, dict):
        raise SpeakerNetError(f"{config_path}: key embedding_model.args is not a mapping")
    args = {key: _threedspeaker_reference(value, config, config_path, f"embedding_model.args.{key}")
            for key, value in args.items()}
    if obj == THREEDSPEAKER_CAMPPLUS:
        defaults, fixed = THREEDSPEAKER_CAMPPLUS_DEFAULTS, ("growth_rate", "bn_size", "init_channels", "config_str")
    elif obj == THREEDSPEAKER_ERES2NETV2:
        defaults, fixed = ERES2NETV2_DEFAULTS, ("pooling_func", "two_emb_layer", "num_blocks")
    else:
        raise SpeakerNetError(f"{config_path}: key embedding_model.obj: {obj} is not a network SpeakerNet imports "
                              f"({THREEDSPEAKER_CAMPPLUS}, {THREEDSPEAKER_ERES2NETV2})")
    for key in args:
        if key not in defaults:
            raise SpeakerNetError(f"{config_path}: key embedding_model.args.{key}: not an argument of {obj}")
    values = {**defaults, **args}
    for key in fixed:
        if values[key] != defaults[key] and not (key == "num_blocks" and list(values[key]) == defaults[key]):
            raise SpeakerNetError(f"{config_path}: key embedding_model.args.{key}: {values[key]!r}; SpeakerNet's "
                                  f"network computes {defaults[key]!r} only")
    extractor = config.get("feature_extractor")
    if extractor is not None:
        if not isinstance(extractor, dict) or extractor.get("obj") != THREEDSPEAKER_FBANK:
            raise SpeakerNetError(f"{config_path}: key feature_extractor.obj: SpeakerNet's kaldi_fbank is "
                                  f"{THREEDSPEAKER_FBANK}'s")
        fbank = {key: _threedspeaker_reference(value, config, config_path, f"feature_extractor.args.{key}")
                 for key, value in (extractor.get("args") or {}).items()}
        if fbank.get("mean_nor", False) is not True:
            raise SpeakerNetError(f"{config_path}: key feature_extractor.args.mean_nor: SpeakerNet's kaldi_fbank "
                                  f"subtracts the utterance mean (mean_nor True)")
        if fbank.get("sample_rate", 16000) != 16000:
            raise SpeakerNetError(f"{config_path}: key feature_extractor.args.sample_rate: "
                                  f"{fbank['sample_rate']}; SpeakerNet's models take 16 kHz")
        if "n_mels" in fbank and fbank["n_mels"] != values["feat_dim"]:
            raise SpeakerNetError(f"{config_path}: key feature_extractor.args.n_mels: {fbank['n_mels']}, but "
                                  f"embedding_model.args.feat_dim is {values['feat_dim']}")
    described = {"nOut": values["embedding_size"], "n_mels": values["feat_dim"]}
    if obj == THREEDSPEAKER_CAMPPLUS:
        return {"model": "CAMPPlus3D", **described}
    variant = ERES2NETV2_VARIANTS.get((values["baseWidth"], values["scale"], values["expansion"]))
    if variant is None:
        raise SpeakerNetError(f"{config_path}: keys embedding_model.args.baseWidth/scale/expansion: "
                              f"{(values['baseWidth'], values['scale'], values['expansion'])} is none of the "
                              f"published {', '.join(map(str, ERES2NETV2_VARIANTS))}")
    return {"model": variant, "channels": values["m_channels"], **described}


def threedspeaker_described(selector: dict, config_path: str) -> dict:
    if selector["kind"] == "config":
        return threedspeaker_config(selector["config"], config_path)
    if selector["kind"] == "network":
        return {"model": selector["name"]}
    if selector["id"] in THREEDSPEAKER_OTHER_IDS:
        raise SpeakerNetError(f"--config {config_path}: model id {selector['id']} is a "
                              f"{THREEDSPEAKER_OTHER_IDS[selector['id']]}, which SpeakerNet does not carry (it imports "
                              f"{', '.join(THREEDSPEAKER_MODEL_IDS)})")
    model, size = THREEDSPEAKER_MODEL_IDS[selector["id"]]
    return {"model": model, "nOut": size, "n_mels": 80}


def read_3dspeaker(path: str, loaded, selector: dict | None, config_path: str | None) -> Imported:
    state = tensor_state(path, loaded, "3D-Speaker")
    network = threedspeaker_network(state, path)
    notes = []
    if selector is not None:
        described = threedspeaker_described(selector, config_path)
        check_agrees(path, network, described, THREEDSPEAKER_HINTS, config_path, selector["kind"])
        notes.append(f"{selector['kind']} {config_path}: {network['model']}, as the keys say")
    if network["model"] == "CAMPPlus3D":
        notes.append("CAM++ with 3D-Speaker's statistics pooling (no 1e-7 under the standard deviation's root)")
    spec = ModelSpec(model=network["model"], nOut=network["nOut"], n_mels=network["n_mels"], encoder_type="TSTP",
                     window=THREEDSPEAKER_WINDOW, channels=network.get("channels"),
                     audio_scale=THREEDSPEAKER_AUDIO_SCALE, frontend="kaldi_fbank")
    return Imported(spec, state, notes=notes)


register(Toolkit("3dspeaker", read_3dspeaker,
                 "a state dict per model id (campplus_cn_common.bin, pretrained_eres2netv2.ckpt, ...)",
                 read_config=read_threedspeaker_selector))
