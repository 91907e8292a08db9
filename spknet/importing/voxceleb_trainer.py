"""The ``voxceleb_trainer`` entry of :mod:`spknet.importing`: checkpoints of voxceleb_trainer, SpeakerNet's upstream
(``python inference.py import --from voxceleb_trainer FILE [--config configs/NAME.yaml]``).

voxceleb_trainer saves ``{"model_state_dict": {"__S__.*": network, "__L__.*": loss}, "optimizer_state_dict",
"scheduler_state_dict", "epoch"}`` (``SpeakerNet.py``, ``saveParameters``); its older checkpoints are the flat
``__S__.*`` / ``__L__.*`` state dict, and its published RawNet3 (``models/weights/RawNet3/model.pt``) is ``{"model":
network state}``, whose keys its loader prefixes with ``__S__.``. All three are read. The keys say the network
(:func:`spknet.checkpoints.infer_model_config`: ResNetSE34L, ResNetSE34V2, RawNet3 or VGGVox) and its options; the
loss's keys (``__L__.*``: AAM-softmax's class weights, a learned scale, ...) are its training classifier, set apart
and named. voxceleb_trainer reads float samples in [-1, 1] and wraps short files around: the spec records
``audio_scale float`` and ``pad wrap`` for every network.

``--config`` is voxceleb_trainer's YAML (``configs/RawNet3_AAM.yaml``), read as data. Its model options, with
voxceleb_trainer's command-line defaults where it leaves one out (as voxceleb_trainer runs it), must agree with the
weights: ``model``, ``nOut``, ``encoder_type``, ``n_mels`` for the mel networks, and ``sinc_stride`` (RawNet3's
filterbank stride, which the weights cannot tell) 10, the one SpeakerNet computes. ``log_input``, which the weights
cannot tell either, is taken from it for the mel networks (RawNet3 always takes the log of its filters' outputs,
whatever the config says). Its training options (loss, learning rate, ...) are not the model's and are left.
"""

import os

from spknet.checkpoints import flat_model_state, infer_model_config
from spknet.errors import SpeakerNetError
from spknet.importing.base import Imported, Toolkit, check_agrees, register
from spknet.specs import ModelSpec

NETWORK, LOSS = "__S__.", "__L__."
AUDIO = {"audio_scale": "float", "pad": "wrap"}     # voxceleb_trainer's DatasetLoader: soundfile floats, 'wrap'
# voxceleb_trainer's command-line defaults (trainSpeakerNet.py), what a config that leaves an option out runs with
CLI_DEFAULTS = {"nOut": 512, "encoder_type": "SAP", "n_mels": 40, "log_input": False, "sinc_stride": 10}
SINC_STRIDE = 10
MEL_NETWORKS = ("ResNetSE34L", "ResNetSE34V2", "VGGVox")
HINTS = dict.fromkeys(("model", *CLI_DEFAULTS), "network (its __S__.* keys)")     # the keys tell each one


def model_state(path: str, loaded) -> dict:
    """The ``__S__.`` / ``__L__.`` state of any of voxceleb_trainer's checkpoint formats (``module.`` removed), or an
    error saying what the file is instead."""
    if isinstance(loaded, dict) and "model_state_dict" in loaded:
        state = loaded["model_state_dict"]
        if not isinstance(state, dict):
            raise SpeakerNetError(f"{path}: key model_state_dict is a {type(state).__name__}, not a state dict")
    else:
        state = flat_model_state(loaded)
    if state is None:
        what = f"a dict with keys {', '.join(map(str, list(loaded)[:4]))}" if isinstance(loaded, dict) and loaded \
            else f"a {type(loaded).__name__}"
        raise SpeakerNetError(f"{path}: not a voxceleb_trainer checkpoint (expected model_state_dict, a state dict "
                              f"of __S__.* keys, or its published {{'model': state dict}}; found {what})")
    state = {key[len("module."):] if key.startswith("module.") else key: value for key, value in state.items()}
    foreign = [key for key in state if not key.startswith((NETWORK, LOSS))]
    if foreign:
        hint = " (a WeSpeaker or 3D-Speaker state dict? --from wespeaker / 3dspeaker)" \
            if len(foreign) == len(state) else ""
        raise SpeakerNetError(f"{path}: key {foreign[0]} is neither the network's ({NETWORK}*) nor the loss's "
                              f"({LOSS}*): not a voxceleb_trainer checkpoint{hint}")
    return state


def config_options(config: dict, config_path: str, model: str) -> dict:
    """The network the config names (``model``, the weights', where it names none) and the model options it gives
    (voxceleb_trainer's defaults for those it leaves out) that ``model`` has."""
    options = {"model": config.get("model") or model,
               **{key: config.get(key, default) for key, default in CLI_DEFAULTS.items()}}
    if model == "RawNet3":
        if options["sinc_stride"] != SINC_STRIDE:
            raise SpeakerNetError(f"{config_path}: key sinc_stride: {options['sinc_stride']}; SpeakerNet's RawNet3 "
                                  f"computes stride {SINC_STRIDE} only")
        return {key: options[key] for key in ("model", "nOut", "encoder_type")}
    return {key: options[key] for key in ("model", "nOut", "encoder_type", "n_mels", "log_input")
            if key == "model" or model in MEL_NETWORKS}


def read_voxceleb_trainer(path: str, loaded, config: dict | None, config_path: str | None) -> Imported:
    state = model_state(path, loaded)
    network = {key: value for key, value in state.items() if key.startswith(NETWORK)}
    head = {key: value for key, value in state.items() if key.startswith(LOSS)}
    if not network:
        raise SpeakerNetError(f"{path}: only a loss ({', '.join(head)}), no network (__S__.*)")
    if config is None and "__S__.netcnn.0.weight" in network and "__S__.sap_linear.weight" not in network:
        raise SpeakerNetError(f"{path}: a VGGVox with TAP or MAX pooling, which have the same keys: give its config "
                              f"(--config) to say which")
    pooling = {"encoder_type": config.get("encoder_type", CLI_DEFAULTS["encoder_type"])} if config else None
    described = infer_model_config(network, path, pooling)
    notes = []
    if config is not None:
        options = config_options(config, config_path, described["model"])
        if not isinstance(options.get("log_input", False), bool):
            raise SpeakerNetError(f"{config_path}: key log_input: {options['log_input']!r}, not True or False")
        # the keys tell the rest but log_input (and what infer_model_config leaves None): the config's must agree
        told = {key: value for key, value in options.items() if key != "log_input" and described.get(key) is not None}
        check_agrees(path, described, told, HINTS, config_path)
        described.update({key: value for key, value in options.items() if key not in told})
        notes.append(f"config {os.path.basename(config_path)}: model {described['model']}, as the keys say")
    spec = ModelSpec(**{**described, **AUDIO})
    origin = {key[len(NETWORK):]: key for key in network}
    return Imported(spec, {key[len(NETWORK):]: value for key, value in network.items()}, dropped=head, notes=notes,
                    origin=origin)


register(Toolkit("voxceleb_trainer", read_voxceleb_trainer,
                 "model.pt (its published RawNet3, {'model': state dict}) or a trainer checkpoint (model000000NNN.model"
                 ", __S__.* / __L__.*), with its configs/*.yaml"))
