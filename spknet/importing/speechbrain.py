"""The ``speechbrain`` entry of :mod:`spknet.importing`: SpeechBrain's ECAPA-TDNN (``speechbrain/spkrec-ecapa-voxceleb``
and any ``speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN`` of the same shape) as the plugin ``ECAPA_TDNN_SB``.

SpeechBrain publishes a model as a folder of files its ``Pretrainer`` loads: ``embedding_model.ckpt`` (the network's
state dict, ``torch.save(module.state_dict())``), ``classifier.ckpt`` (its training classifier's class weights),
``mean_var_norm_emb.ckpt`` (statistics of an embedding normalisation that its verification does not apply) and
``hyperparams.yaml``. The embedding model is what is imported; the other two, given as the file, are named and
refused. ``hyperparams.yaml`` builds objects through hyperpyyaml's tags (``!new:``, ``!name:``, ``!ref``, ...): here
it is parsed as data (:func:`read_hyperparams`: every tag becomes a :class:`Tagged` value, nothing is imported or
called), and its ``embedding_model`` arguments, with their ``!ref <name>`` references resolved, must agree with the
weights and with what ``ECAPA_TDNN_SB`` computes.
"""

import os
from dataclasses import dataclass

import yaml

from spknet.errors import SpeakerNetError
from spknet.importing.base import Imported, Toolkit, check_agrees, read_config, register, tensor_state
from spknet.specs import ModelSpec

NETWORK = "ECAPA_TDNN_SB"
ECAPA_CLASS = "speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN"
FBANK_CLASS = "speechbrain.lobes.features.Fbank"
NORMALISATION_CLASS = "speechbrain.processing.features.InputNormalization"
# the keys that make a state dict SpeechBrain's ECAPA-TDNN: the first TDNN block, the aggregation, pooling, fc
ECAPA_KEYS = ("blocks.0.conv.conv.weight", "mfa.conv.conv.weight", "asp.tdnn.conv.conv.weight", "fc.conv.weight")
# ECAPA_TDNN's constructor arguments: None where the value is read into the spec (checked against the weights),
# IGNORED where it does not change the embedding (not even its references are followed), else the only value
# SpeakerNet's network computes (SpeechBrain's defaults and its published model's)
IGNORED = "(ignored)"
ECAPA_ARGS = {"input_size": None, "lin_neurons": None, "channels": None, "kernel_sizes": [5, 3, 3, 3, 1],
              "dilations": [1, 2, 3, 4, 1], "attention_channels": 128, "res2net_scale": 8, "se_channels": 128,
              "global_context": True, "groups": [1, 1, 1, 1, 1], "dropout": 0.0, "activation": "torch.nn.ReLU",
              "device": IGNORED}
ECAPA_DEFAULT_CHANNELS = [512, 512, 512, 512, 1536]
# Fbank's options with the values speechbrain_fbank computes (n_mels is read, and must be the network's input)
FBANK_ARGS = {"n_mels": None, "sample_rate": 16000, "n_fft": 400, "win_length": 25, "hop_length": 10, "f_min": 0,
              "f_max": None, "deltas": False, "context": False, "requires_grad": False, "filter_shape": "triangular",
              "left_frames": 5, "right_frames": 5, "param_change_factor": IGNORED, "param_rand_factor": IGNORED}
# InputNormalization's options: sentence mean normalisation, as speechbrain_fbank computes it; the statistics'
# bookkeeping options do not change a sentence normalisation
NORMALISATION_ARGS = {"norm_type": "sentence", "std_norm": False, "mean_norm": True, "length_dim": 1,
                      "avg_factor": IGNORED, "update_until_epoch": IGNORED, "avoid_padding_norm": IGNORED,
                      "epsilon": IGNORED, "requires_grad": IGNORED, "device": IGNORED}
NORMALISATION_REQUIRED = ("norm_type", "std_norm")     # their defaults (global, True) are not what is computed
AUDIO_SCALE = "float"       # SpeechBrain's Fbank takes torchaudio's float samples in [-1, 1]
# where hyperparams.yaml and the weights say each option the import reads
HYPERPARAMS_KEYS = {"n_mels": "embedding_model.input_size", "nOut": "embedding_model.lin_neurons",
                    "channels": "embedding_model.channels"}
SPEECHBRAIN_HINTS = {"n_mels": "key blocks.0.conv.conv.weight", "nOut": "key fc.conv.weight",
                     "channels": "key blocks.0.conv.conv.weight"}


# ----------------------------------------------------------------------------------------------------------------
# hyperparams.yaml as data
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tagged:
    """A hyperpyyaml tag as data: ``tag`` (``!new:speechbrain.lobes.features.Fbank``, ``!ref``, ...) and the value it
    was given (a mapping, a list or a string)."""
    tag: str
    value: object


class HyperparamsLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose unknown tags become :class:`Tagged` data instead of errors (or objects)."""


def _tagged(loader: HyperparamsLoader, suffix: str, node: yaml.Node) -> Tagged:
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return Tagged("!" + suffix, value)


HyperparamsLoader.add_multi_constructor("!", _tagged)


def read_hyperparams(path: str) -> dict:
    """SpeechBrain's ``hyperparams.yaml`` as data: a mapping whose tagged values are :class:`Tagged`."""
    return read_config(path, HyperparamsLoader, "SpeechBrain hyperparams file")


def _resolved(value, config: dict, config_path: str, key: str, seen: tuple = ()):
    """``value`` with its ``!ref <name>`` references replaced by the config's top-level ``name`` (hyperpyyaml's
    simple references; an expression such as ``!ref <a> * 2`` is an error naming the key)."""
    if isinstance(value, Tagged) and value.tag == "!ref":
        text = str(value.value).strip()
        name = text[1:-1] if text.startswith("<") and text.endswith(">") and text.count("<") == 1 else None
        if name is None:
            raise SpeakerNetError(f"{config_path}: key {key}: !ref {text} is not a plain <name> reference, which "
                                  f"SpeakerNet reads")
        if name not in config or name in seen:
            raise SpeakerNetError(f"{config_path}: key {key}: !ref {text} refers to {name}, which the config "
                                  f"{'defines in a cycle' if name in seen else 'lacks'}")
        return _resolved(config[name], config, config_path, key, seen + (name,))
    if isinstance(value, list):
        return [_resolved(item, config, config_path, key, seen) for item in value]
    return value


def _class_name(value) -> str | None:
    """The class a ``!new:`` or ``!name:`` tag names."""
    if isinstance(value, Tagged) and value.tag.startswith(("!new:", "!name:")):
        return value.tag.split(":", 1)[1]
    return None


def _arguments(config: dict, config_path: str, key: str, expected_class: str, allowed: dict, ours: str) -> dict:
    """The arguments of ``config[key]``, a ``!new:expected_class`` mapping, references resolved; an argument the
    class lacks, or one SpeakerNet computes otherwise, is an error naming the key."""
    node = config[key]
    if _class_name(node) != expected_class or not node.tag.startswith("!new:"):
        found = node.tag if isinstance(node, Tagged) else type(node).__name__
        raise SpeakerNetError(f"{config_path}: key {key}: {found} is not !new:{expected_class}, which SpeakerNet "
                              f"imports")
    raw = node.value if isinstance(node.value, dict) else {}
    if not isinstance(node.value, dict) and node.value not in ("", None):
        raise SpeakerNetError(f"{config_path}: key {key}: positional arguments; SpeakerNet reads named ones")
    args = {}
    for name, value in raw.items():
        if name not in allowed:
            raise SpeakerNetError(f"{config_path}: key {key}.{name}: not an argument of {expected_class} that "
                                  f"SpeakerNet knows")
        if allowed[name] == IGNORED:
            continue
        value = _resolved(value, config, config_path, f"{key}.{name}")
        if name == "activation":
            value = _class_name(value) or value
        if allowed[name] is not None and value != allowed[name]:
            raise SpeakerNetError(f"{config_path}: key {key}.{name}: {value!r}; SpeakerNet's {ours} computes "
                                  f"{allowed[name]!r} only")
        args[name] = value
    return args


def hyperparams_network(config: dict, config_path: str) -> dict:
    """What ``hyperparams.yaml`` says of the network: ``n_mels``, ``nOut``, ``channels`` (C of ``[C, C, C, C, 3C]``),
    after checking its ``embedding_model`` (and ``compute_features``, ``mean_var_norm`` when present) against what
    ``ECAPA_TDNN_SB`` and ``speechbrain_fbank`` compute."""
    if "embedding_model" not in config:
        raise SpeakerNetError(f"{config_path}: key embedding_model: missing (not a SpeechBrain speaker model's "
                              f"hyperparams.yaml)")
    args = _arguments(config, config_path, "embedding_model", ECAPA_CLASS, ECAPA_ARGS, NETWORK)
    if "input_size" not in args:
        raise SpeakerNetError(f"{config_path}: key embedding_model.input_size: missing (a required argument of "
                              f"{ECAPA_CLASS})")
    channels = args.get("channels", ECAPA_DEFAULT_CHANNELS)
    if not (isinstance(channels, list) and len(channels) == 5 and channels[:4] == [channels[0]] * 4
            and channels[4] == 3 * channels[0]):
        raise SpeakerNetError(f"{config_path}: key embedding_model.channels: {channels!r}; SpeakerNet's {NETWORK} "
                              f"computes [C, C, C, C, 3C] only")
    described = {"n_mels": args["input_size"], "nOut": args.get("lin_neurons", 192), "channels": channels[0]}
    if "compute_features" in config:
        fbank = _arguments(config, config_path, "compute_features", FBANK_CLASS, FBANK_ARGS,
                           "speechbrain_fbank")
        if fbank.get("n_mels", 40) != described["n_mels"]:
            raise SpeakerNetError(f"{config_path}: key compute_features.n_mels: {fbank.get('n_mels', 40)}, but "
                                  f"embedding_model.input_size is {described['n_mels']}")
    if "mean_var_norm" in config:
        normalisation = _arguments(config, config_path, "mean_var_norm", NORMALISATION_CLASS,
                                   NORMALISATION_ARGS, "speechbrain_fbank")
        for name in NORMALISATION_REQUIRED:
            if name not in normalisation:
                raise SpeakerNetError(f"{config_path}: key mean_var_norm.{name}: missing, so {NORMALISATION_CLASS}'s "
                                      f"default; SpeakerNet's speechbrain_fbank computes {name} "
                                      f"{NORMALISATION_ARGS[name]!r} only")
    return described


# ----------------------------------------------------------------------------------------------------------------
# The files
# ----------------------------------------------------------------------------------------------------------------

def speechbrain_network(state: dict, path: str) -> dict:
    """What the keys and shapes of SpeechBrain's ECAPA-TDNN state dict say: ``n_mels``, ``nOut``, ``channels``; an
    error for a classifier or another network (the shapes of the rest are the strict load's)."""
    if "weight" in state and not any(key in state for key in ECAPA_KEYS):
        shape = "x".join(map(str, state["weight"].shape))
        raise SpeakerNetError(f"{path}: SpeechBrain's classifier head (classifier.ckpt: key weight {shape}, the "
                              f"training classes' weights), not the embedding network: import embedding_model.ckpt")
    missing = [key for key in ECAPA_KEYS if key not in state]
    if missing:
        raise SpeakerNetError(f"{path}: key {missing[0]} missing: not SpeechBrain's ECAPA-TDNN (keys "
                              f"{', '.join(ECAPA_KEYS)}); its keys start {', '.join(sorted(state)[:3])}")
    first = state["blocks.0.conv.conv.weight"]
    return {"n_mels": first.shape[1], "channels": first.shape[0], "nOut": state["fc.conv.weight"].shape[0]}


def read_speechbrain(path: str, loaded, config: dict | None, config_path: str | None) -> Imported:
    if isinstance(loaded, dict) and "glob_mean" in loaded:
        raise SpeakerNetError(f"{path}: SpeechBrain's embedding normalisation statistics (mean_var_norm_emb.ckpt: "
                              f"keys {', '.join(map(str, loaded))}), not the embedding network: import "
                              f"embedding_model.ckpt (SpeechBrain's verification does not apply these statistics)")
    state = tensor_state(path, loaded, "SpeechBrain")
    network = speechbrain_network(state, path)
    notes = []
    if config is not None:
        check_agrees(path, network, hyperparams_network(config, config_path), SPEECHBRAIN_HINTS, config_path,
                     config_keys=HYPERPARAMS_KEYS)
        notes.append(f"config {os.path.basename(config_path)}: {ECAPA_CLASS} with channels "
                     f"[{', '.join(str(network['channels'] * k) for k in (1, 1, 1, 1, 3))}], as the weights say")
    spec = ModelSpec(model=NETWORK, nOut=network["nOut"], n_mels=network["n_mels"], encoder_type="ASP",
                     window="hamming", channels=network["channels"], audio_scale=AUDIO_SCALE,
                     frontend="speechbrain_fbank")
    return Imported(spec, state, notes=notes)


register(Toolkit("speechbrain", read_speechbrain, "embedding_model.ckpt (a state dict) with its hyperparams.yaml",
                 read_config=read_hyperparams))
