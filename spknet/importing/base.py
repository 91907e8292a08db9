"""What every import shares: the table of toolkits, safe reading of their files, and the import itself
(see :mod:`spknet.importing`)."""

import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import yaml

from spknet import atomic
from spknet.errors import SpeakerNetError
from spknet.files import file_digest
from spknet.model import SpeakerNet
from spknet.specs import SCHEMA, ModelSpec

# ----------------------------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Imported:
    """What a toolkit's reader makes of a file: the network's spec, its state (the network's own keys, without
    ``__S__.``), the keys set apart (the classifier head: key -> shape) and notes for the log."""
    spec: ModelSpec
    state: dict
    dropped: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    origin: dict = field(default_factory=dict)      # the file's name of each key, for messages


@dataclass(frozen=True)
class Toolkit:
    """A toolkit SpeakerNet imports from. ``read(path, loaded, config, config_path)`` turns the loaded file (and the
    config read as data, or None) into an :class:`Imported`, or raises a :class:`SpeakerNetError` naming the file
    and the key. ``records``: the pickled types its files may hold besides tensors, rebuilt as inert records
    (:class:`Record`); ``mappings``: the dict subclasses it may hold, read as plain dicts."""
    name: str
    read: Callable
    published: str
    records: tuple[str, ...] = ()
    mappings: tuple[str, ...] = ()
    takes_config: bool = True
    read_config: Callable | None = None         # what --config is read into (None: a YAML file, read_config)


TOOLKITS: dict[str, Toolkit] = {}


def register(toolkit: Toolkit) -> Toolkit:
    TOOLKITS[toolkit.name] = toolkit
    return toolkit


def toolkit(name: str) -> Toolkit:
    if name not in TOOLKITS:
        raise SpeakerNetError(f"unknown toolkit {name!r}: choose {', '.join(sorted(TOOLKITS))}")
    return TOOLKITS[name]


# ----------------------------------------------------------------------------------------------------------------
# Reading safely
# ----------------------------------------------------------------------------------------------------------------

class Record:
    """An inert stand-in for a pickled object of a type the toolkit's entry names: its constructor arguments and
    state are kept (``args``, ``state``), nothing of the type's code runs."""
    __slots__ = ("args", "state")
    type_name = ""

    def __new__(cls, *args):
        record = object.__new__(cls)
        record.args, record.state = args, None
        return record

    def __init__(self, *args):
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.type_name} {self.args or self.state}>"


def _stand_in(name: str, mapping: bool):
    """The inert stand-in of the pickled type ``name``: a :class:`Record` subclass, or ``dict`` itself for a dict
    subclass (torch's unpickler fills plain dicts only; the items are what matters)."""
    if mapping:
        return dict
    return type(name.rsplit(".", 1)[-1], (Record,), {"type_name": name, "__slots__": ()})


def _file_globals(path: str) -> list[str]:
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:           # not a zip checkpoint, or unreadable: the load below says which
        return []


def read_file(path: str, kit: Toolkit):
    """The file at ``path``, loaded with ``weights_only=True``; the types ``kit`` names rebuilt as records."""
    if not os.path.isfile(path):
        raise SpeakerNetError(f"{path}: file not found")
    needed = _file_globals(path)
    foreign = [name for name in needed if name not in kit.records + kit.mappings]
    if foreign:
        hint = next((f"; is it a {other.name} checkpoint? (--from {other.name})" for other in TOOLKITS.values()
                     if other is not kit and set(needed) <= set(other.records + other.mappings)), "")
        raise SpeakerNetError(f"{path}: refused: not a {kit.name} checkpoint as SpeakerNet knows it: its pickle "
                              f"needs {', '.join(foreign[:4])}, not only tensors{hint}")
    allowed = [(_stand_in(name, name in kit.mappings), name) for name in needed]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = re.search(r"GLOBAL (\S+)", str(error))       # a legacy (not zip) file that pickles a type
        if unsafe:
            raise SpeakerNetError(f"{path}: refused: not a {kit.name} checkpoint as SpeakerNet knows it: its "
                                  f"pickle needs {unsafe.group(1)}, not only tensors") from None
        raise SpeakerNetError(f"{path}: not a readable PyTorch checkpoint (its data is not a valid pickle)") from None
    except Exception as error:  # torch raises many types for files that are not checkpoints
        first = str(error).splitlines()[0] if str(error) else ""
        raise SpeakerNetError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {first})") from None


def read_config(path: str, loader=yaml.SafeLoader, what: str = "config") -> dict:
    """A YAML config as data (``loader``, a :class:`yaml.SafeLoader`: no tag constructs anything); a mapping, or
    an error naming the file (``what`` it should have been)."""
    try:
        with open(path, encoding="utf-8") as handle:
            config = yaml.load(handle, Loader=loader)      # noqa: S506 (a SafeLoader: data only)
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise SpeakerNetError(f"{path}: cannot read the config ({reason})") from None
    except yaml.YAMLError as error:
        raise SpeakerNetError(f"{path}: not a YAML config SpeakerNet can read as data ({str(error).splitlines()[0]})") \
            from None
    if not isinstance(config, dict):
        raise SpeakerNetError(f"{path}: not a {what} (expected a YAML mapping, got {type(config).__name__})")
    return config


def tensor_state(path: str, loaded, kit: str) -> dict:
    """``loaded`` when it is a non-empty state dict of tensors (``module.`` prefixes removed); otherwise an error
    saying what the file is instead."""
    if isinstance(loaded, dict) and loaded and all(isinstance(value, torch.Tensor) for value in loaded.values()):
        return {key[len("module."):] if key.startswith("module.") else key: value for key, value in loaded.items()}
    if isinstance(loaded, dict) and "model_state_dict" in loaded:
        raise SpeakerNetError(f"{path}: not a {kit} checkpoint: it is a SpeakerNet or voxceleb_trainer checkpoint "
                              f"(key model_state_dict); use it as --initial_model as it is")
    if isinstance(loaded, dict) and "pyannote.audio" in loaded:
        raise SpeakerNetError(f"{path}: not a {kit} checkpoint: it is a pyannote checkpoint (key pyannote.audio); "
                              f"--from pyannote")
    what = f"a dict with keys {', '.join(map(str, list(loaded)[:4]))}" if isinstance(loaded, dict) and loaded \
        else f"a {type(loaded).__name__}"
    raise SpeakerNetError(f"{path}: not a {kit} checkpoint (expected a state dict of tensors, found {what})")


def check_agrees(path: str, network: dict, described: dict, hints: dict, config_path: str,
                 kind: str = "config", config_keys: dict | None = None) -> None:
    """What a config (or model id: ``kind``) says of the network against what the weights say; the first option
    they differ in is one error naming the file, the config (and the key it is read from, ``config_keys``, where
    it has keys), the option and where in the weights it is read (``hints``)."""
    for key, value in described.items():
        if network.get(key) != value:
            where = f" key {config_keys[key]}" if config_keys and key in config_keys else ""
            raise SpeakerNetError(f"{path}: the {kind} contradicts the weights: {config_path}{where} says {key} "
                                  f"{value}, the file's {hints[key]} says {network[key]}")


def count_blocks(state: dict, prefix: str) -> int:
    """How many numbered blocks ``prefix0.``, ``prefix1.``, ... the state dict holds (a stage's depth)."""
    return 1 + max((int(key[len(prefix):].split(".")[0]) for key in state
                    if key.startswith(prefix) and key[len(prefix):].split(".")[0].isdigit()), default=-1)


# ----------------------------------------------------------------------------------------------------------------
# The import
# ----------------------------------------------------------------------------------------------------------------

FRONT_END_WORDS = {"kaldi_fbank": "Kaldi fbanks", "logmel": "log-mel bands", "speechbrain_fbank": "SpeechBrain fbanks"}


@dataclass
class ImportReport:
    out: str
    spec: ModelSpec
    keys: int
    dropped: dict
    notes: list

    def lines(self, toolkit_name: str, path: str) -> list[str]:
        spec = self.spec
        inputs = "the raw waveform" if spec.frontend == "waveform" else \
            f"{spec.n_mels} {FRONT_END_WORDS.get(spec.frontend, spec.frontend)}, window {spec.window}"
        lines = [f"{path}: {toolkit_name} {spec.model} (nOut {spec.nOut}, {inputs}, audio_scale "
                 f"{spec.audio_scale}): {self.keys} tensors loaded, every key of the "
                 f"network from the file"]
        lines += [f"note: {note}" for note in self.notes]
        if self.dropped:
            shapes = ", ".join(f"{key} {'x'.join(map(str, shape))}" for key, shape in self.dropped.items())
            lines.append(f"dropped {shapes}: {toolkit_name}'s training classifier, not part of the embedding; "
                         f"training from this model starts a new loss head")
        lines.append(f"written to {self.out}")
        return lines


def strict_network(imported: Imported, path: str):
    """The embedding network of ``imported.spec`` with ``imported.state`` loaded: every key of the network from the
    file with its shape, every key of the file used, or an error naming the file and the key."""
    net = SpeakerNet(imported.spec)
    own = net.__S__.state_dict()
    name = imported.origin.get
    unused = [key for key in imported.state if key not in own]
    if unused:
        raise SpeakerNetError(f"{path}: key {name(unused[0], unused[0])} is not part of {net.spec.model} "
                              f"({len(unused)} unused key(s)): the file is not the network its keys describe")
    missing = [key for key in own if key not in imported.state]
    if missing:
        raise SpeakerNetError(f"{path}: key {missing[0]} of {net.spec.model} is missing from the file "
                              f"({len(missing)} key(s) missing); nothing is left at random")
    for key, value in imported.state.items():
        if value.shape != own[key].shape:
            raise SpeakerNetError(f"{path}: key {name(key, key)} has shape {tuple(value.shape)}, {net.spec.model} "
                                  f"needs {tuple(own[key].shape)}")
    net.__S__.load_state_dict(imported.state, strict=True)
    return net


def import_checkpoint(toolkit_name: str, path: str, out: str, config_path: str | None = None) -> ImportReport:
    """Import ``path``, a checkpoint of ``toolkit_name`` (its config at ``config_path``), into a SpeakerNet
    checkpoint at ``out``; nothing is written unless it all succeeds."""
    kit = toolkit(toolkit_name)
    if config_path and not kit.takes_config:
        raise SpeakerNetError(f"--config {config_path}: a {kit.name} checkpoint carries its own configuration")
    config = (kit.read_config or read_config)(config_path) if config_path else None
    loaded = read_file(path, kit)
    imported = kit.read(path, loaded, config, config_path)
    net = strict_network(imported, path)
    checkpoint = {
        "model_state_dict": {f"__S__.{key}": value for key, value in net.__S__.state_dict().items()},
        "run": {"schema": SCHEMA, "model": net.spec.record(), "options": {}, "lists": {}},
        "imported": {"toolkit": kit.name, "file": os.path.basename(path), "sha256": file_digest(path),
                     "config": os.path.basename(config_path) if config_path else None,
                     "dropped": {key: list(value.shape) for key, value in imported.dropped.items()}},
    }
    try:
        atomic.save_torch(checkpoint, out)
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise SpeakerNetError(f"{out}: could not be written ({reason})") from None
    report = ImportReport(out, net.spec, len(checkpoint["model_state_dict"]),
                          {key: tuple(value.shape) for key, value in imported.dropped.items()}, imported.notes)
    return report
