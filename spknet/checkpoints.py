"""Checkpoints: their names, reading every supported format, loading weights with a key report, atomic saves,
the mid-interval ``resume.state`` and its retirement, the temporaries a killed save leaves, and the model a
checkpoint holds (its recorded :class:`~spknet.specs.ModelSpec`, or what the original's keys say).

A SpeakerNet checkpoint is voxceleb_trainer's layout, ``{"model_state_dict", "optimizer_state_dict",
"scheduler_state_dict", "epoch", ...}``, with the original's ``__S__.*`` / ``__L__.*`` model keys; the original's
flat state dict and ``module.``-prefixed keys are read too.
"""

import errno
import glob
import os
import pickle
import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from spknet import atomic
from spknet.errors import SpeakerNetError
from spknet.identity import Sides, run_differences
from spknet.logs import log
from spknet.model import SpeakerNet
from spknet.specs import ModelSpec

CHECKPOINT_PATTERN = "model%09d.model"
CHECKPOINT_NAME = re.compile(r"model(\d{9})\.model")
RESUME_STATE = "resume.state"      # saved after epochs without evaluation and on interruption


def checkpoint_path(model_dir: str, epoch: int) -> str:
    return os.path.join(model_dir, CHECKPOINT_PATTERN % epoch)


def eer_path(checkpoint: str) -> str:
    """The ``.eer`` file beside an epoch checkpoint."""
    return checkpoint[:-len(".model")] + ".eer"


def epoch_checkpoints(model_dir: str) -> list[tuple[int, str]]:
    """Every complete ``model%09d.model`` in ``model_dir`` as ``(epoch, path)``, oldest first (other files, such
    as averaged checkpoints, ``resume.state`` or temporaries, are not epoch checkpoints): the one listing."""
    found = []
    for path in glob.glob(os.path.join(model_dir, "model*.model")):
        match = CHECKPOINT_NAME.fullmatch(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


# ----------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------

class DamagedCheckpoint(SpeakerNetError):
    """A checkpoint file that cannot be read: truncated, corrupt, or not a PyTorch file."""


class UnsafeCheckpoint(SpeakerNetError):
    """A checkpoint whose pickle would run code (objects other than tensors and plain containers)."""


def _unsafe_globals(path: str) -> list[str]:
    """The types a checkpoint's pickle needs beyond what ``weights_only`` loading allows (torch's own scan)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (ValueError, RuntimeError, OSError, pickle.UnpicklingError):
        return []


def read_checkpoint(path: str, trust: bool = False) -> dict:
    """Any supported checkpoint format, as ``{"model_state_dict": flat state, ...}``.

    Files are read with ``weights_only=True``: tensors and plain containers only, which is all SpeakerNet, the
    original and voxceleb_trainer save (so the allow-list of extra types is empty). A file whose pickle needs any
    other type is refused, naming the types, unless ``trust`` (which runs the file's code).
    """
    if not os.path.isfile(path):
        raise SpeakerNetError(f"{path}: checkpoint not found")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError:
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise UnsafeCheckpoint(f"{path}: refused: loading it would run code from the file (its pickle needs "
                                   f"{', '.join(unsafe)}, not only tensors)") from None
        raise DamagedCheckpoint(f"{path}: not a readable PyTorch checkpoint (its data is not a valid pickle)") from None
    except Exception as error:  # torch raises many types for corrupt files
        raise DamagedCheckpoint(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: "
                                f"{_first_line(error)})") from None
    if isinstance(loaded, dict) and "model_state_dict" in loaded:
        checkpoint = dict(loaded)
    elif flat_model_state(loaded) is not None:
        checkpoint = {"model_state_dict": flat_model_state(loaded)}
    else:
        raise SpeakerNetError(f"{path}: not a SpeakerNet checkpoint (expected a state dict of tensors or a dict "
                              f"with 'model_state_dict')")
    state = checkpoint["model_state_dict"]
    checkpoint["model_state_dict"] = {key[len("module."):] if key.startswith("module.") else key: value
                                      for key, value in state.items()}
    return checkpoint


def _tensors(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def flat_model_state(loaded) -> dict | None:
    """The model state of a file without ``model_state_dict``: the original's flat state dict (``__S__.*`` and
    ``__L__.*``), or voxceleb_trainer's ``{"model": network state}`` (its published RawNet3 ``model.pt``), whose keys
    get the ``__S__.`` prefix as voxceleb_trainer's loader gives them; None for anything else."""
    if _tensors(loaded):
        return loaded
    if isinstance(loaded, dict) and list(loaded) == ["model"] and _tensors(loaded["model"]):
        return {f"__S__.{key}": value for key, value in loaded["model"].items()}
    return None


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else ""


@dataclass
class KeyReport:
    """What :func:`load_model_state` did with each key."""
    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    misshapen: list[str]


def _warn_about(report: KeyReport, source: str) -> None:
    for kind in ("misshapen", "unexpected", "missing"):
        keys = getattr(report, kind)
        model_keys = [k for k in keys if k.startswith("__S__.")]
        if model_keys or (keys and kind == "misshapen"):
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            log.warning(f"{source}: {kind} key(s) skipped: {shown}")
        elif keys:
            log.info(f"note: {source}: {len(keys)} {kind} loss key(s) ({', '.join(keys[:4])}) left as initialised")


def load_model_state(net: torch.nn.Module, state: dict, source: str, prefixes: tuple[str, ...] = (),
                     strict: bool = False) -> KeyReport:
    """Copy matching tensors into ``net``; skip, with a warning naming them, keys that are unknown or misshapen.

    With ``prefixes``, only the file's keys that start with one of them are considered (evaluation loads the
    embedding network ``__S__.`` alone). ``strict`` (a resume: the same run's own state) makes a misshapen or
    missing key an error.
    """
    if prefixes:
        state = {key: value for key, value in state.items() if key.startswith(prefixes)}
    own = net.state_dict()
    report = KeyReport([], [], [], [])
    with torch.no_grad():
        for key, value in state.items():
            if key not in own:
                report.unexpected.append(key)
            elif own[key].shape != value.shape:
                report.misshapen.append(f"{key} (model {tuple(own[key].shape)}, file {tuple(value.shape)})")
            else:
                own[key].copy_(value)
                report.loaded.append(key)
    report.missing = [key for key in own if key not in state]
    if not report.loaded:
        raise SpeakerNetError(f"{source}: no key of this checkpoint matches the model "
                              f"(file keys start with {sorted(state)[:3]}); is it from another model?")
    if strict and (report.misshapen or report.missing):
        keys = report.misshapen + [f"{key} (missing)" for key in report.missing]
        raise SpeakerNetError(f"{source}: this state does not fit the model: {', '.join(keys[:4])}"
                              f"{f', ... ({len(keys)} in all)' if len(keys) > 4 else ''}")
    _warn_about(report, source)
    return report


# ----------------------------------------------------------------------------------------------------------------
# Saving and resuming
# ----------------------------------------------------------------------------------------------------------------

@contextmanager
def _saving(path: str):
    """A failed write (disk full, I/O error) ends the run with a message; the atomic write has already removed its
    temporary file, and the file it would have replaced is intact."""
    try:
        yield
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        hint = "; free some space, then" if error.errno == errno.ENOSPC else "; then"
        raise SpeakerNetError(f"{path}: could not be saved ({reason}). The previous checkpoint is intact{hint} run "
                              f"the same command again to resume from it") from None


def save_checkpoint(path: str, trainer_state: dict, epoch: int, last_eer: float, progress: dict | None,
                    run: dict | None = None) -> None:
    """The trainer's state with the run's position (epoch, progress inside the next one, last EER), the random
    state and ``run`` (the run's options, which a resume compares), written atomically."""
    with _saving(path):
        atomic.save_torch({
            **trainer_state,
            "epoch": epoch,
            "last_eer": last_eer,
            "progress": progress,
            "torch_rng_state": torch.get_rng_state(),
            "cuda_rng_state": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            **({"run": run} if run is not None else {}),
        }, path)


def restore_random_state(checkpoint: dict) -> None:
    if "torch_rng_state" in checkpoint:
        torch.set_rng_state(checkpoint["torch_rng_state"])
    if checkpoint.get("cuda_rng_state") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(checkpoint["cuda_rng_state"])


def set_aside(path: str) -> str:
    """Rename a damaged file to ``*.corrupt`` (``*.corrupt.N`` when taken): never deleted."""
    target, number = path + ".corrupt", 1
    while os.path.exists(target):
        number += 1
        target = f"{path}.corrupt.{number}"
    os.replace(path, target)
    return target


def _readable(path: str, trust: bool) -> dict | None:
    """The checkpoint, or None after reporting a damaged one and setting it aside (an unsafe one is refused)."""
    try:
        return read_checkpoint(path, trust)
    except DamagedCheckpoint as error:
        target = set_aside(path)
        log.warning(f"{error}; set aside ({os.path.basename(target)} now), resuming from the newest good state")
        return None


def resume_point(model_dir: str, trust: bool = False) -> tuple[str, dict] | None:
    """The furthest good saved state, as its path and its contents: the newest readable ``model%09d.model`` or
    ``resume.state`` (mid-interval / interrupted). Damaged files on the way are set aside."""
    candidates = []
    state_path = os.path.join(model_dir, RESUME_STATE)
    state = _readable(state_path, trust) if os.path.isfile(state_path) else None
    if state is not None:
        batches = (state.get("progress") or {}).get("batches", 0)
        candidates.append(((int(state["epoch"]), batches), state_path, state))
    candidates += [((epoch, 0), path, None) for epoch, path in epoch_checkpoints(model_dir)]
    for (epoch, _), path, checkpoint in sorted(candidates, key=lambda candidate: candidate[0], reverse=True):
        checkpoint = checkpoint if checkpoint is not None else _readable(path, trust)
        if checkpoint is not None:
            checkpoint.setdefault("epoch", epoch)        # the original's checkpoints: the epoch is in the name
            return path, checkpoint
    return None


def retire_resume_state(model_dir: str) -> None:
    """A complete epoch checkpoint supersedes ``resume.state``."""
    stale = os.path.join(model_dir, RESUME_STATE)
    if os.path.exists(stale):
        os.unlink(stale)


def save_epoch(model_dir: str, trainer_state: dict, epoch: int, eer: float, run: dict | None = None,
               evaluated: bool = True) -> str:
    """``model%09d.model`` and, for an evaluated epoch (``eer`` its EER), its ``.eer``; retires ``resume.state``.
    An epoch kept for the run's final weight average is not evaluated: no ``.eer``, and ``eer`` is the last
    evaluation's (what a resume continues with)."""
    path = checkpoint_path(model_dir, epoch)
    save_checkpoint(path, trainer_state, epoch, eer, None, run)
    if evaluated:
        with _saving(eer_path(path)):
            atomic.write_text(eer_path(path), "%.4f" % eer)
    retire_resume_state(model_dir)
    return path


def save_resume_state(model_dir: str, trainer_state: dict, epoch: int, last_eer: float,
                      progress: dict | None, run: dict | None = None) -> str:
    path = os.path.join(model_dir, RESUME_STATE)
    save_checkpoint(path, trainer_state, epoch, last_eer, progress, run)
    return path


def remove_stale_temporaries(folder: str) -> None:
    """Temporary files of saves that a killed run never finished (the complete files they would replace remain)."""
    for path in glob.glob(os.path.join(folder, ".*.tmp")):
        os.unlink(path)


# ----------------------------------------------------------------------------------------------------------------
# Averaging
# ----------------------------------------------------------------------------------------------------------------

def _check_same_run(path: str, state: dict, run, reference_path: str, reference: dict, reference_run) -> None:
    """The checkpoint at ``path`` has the reference's keys, shapes, dtypes and run options, or an error naming it."""
    extra, absent = sorted(set(state) - set(reference)), sorted(set(reference) - set(state))
    if extra or absent:
        which = f"has {extra[0]}, which" if extra else f"lacks {absent[0]}, which"
        raise SpeakerNetError(f"{path}: not the same model as {reference_path}: it {which} the other "
                              f"{'lacks' if extra else 'has'} ({len(extra) + len(absent)} key(s) differ); "
                              f"only checkpoints of one run can be averaged")
    for key, value in state.items():
        if value.shape != reference[key].shape or value.dtype != reference[key].dtype:
            raise SpeakerNetError(f"{path}: not the same model as {reference_path}: {key} is "
                                  f"{tuple(value.shape)} {value.dtype} there, {tuple(reference[key].shape)} "
                                  f"{reference[key].dtype} in {reference_path}")
    if (run is None) != (reference_run is None):
        reason = f"{path if run is None else reference_path} carries no run options"
    else:
        first, second = os.path.basename(reference_path), os.path.basename(path)
        if first == second:
            first, second = reference_path, path
        reason = "; ".join(difference.words(Sides.files(first, second))
                           for difference in run_differences(reference_run or {}, run or {}))
    if reason:
        raise SpeakerNetError(f"{path}: not from the same run as {reference_path} ({reason}); only checkpoints of "
                              f"one run can be averaged")


def average_checkpoints(paths: list[str], trust: bool = False) -> dict:
    """The checkpoint whose weights are the mean of those at ``paths`` (oldest first, the last the newest).

    Every floating-point tensor is averaged, BatchNorm's running mean and variance included (in float64, then
    cast back); integer tensors (BatchNorm's ``num_batches_tracked``) are the newest's: the mean model has seen
    what the newest has. The files must hold the same keys, shapes and dtypes and, when they carry one, the same
    run (:func:`~spknet.identity.run_differences`, the comparison a resume makes: a run resumed across schemas is
    one run); otherwise an error names the file and each difference. Files are read one at a time
    (``weights_only``, as :func:`read_checkpoint`), so memory holds two states, not ``len(paths)``.

    The result keeps the newest's ``run`` (so that inference knows the model), the sources' epochs
    (``averaged_epochs``) and file names (``averaged_from``), and no ``epoch``, optimizer, scheduler or random
    state: it is a model to evaluate or to start a new run from, not a point to resume.
    """
    if not paths:
        raise SpeakerNetError("no checkpoints to average")
    sums, reference, reference_run, epochs = {}, None, None, []
    for path in paths:
        checkpoint = read_checkpoint(path, trust)
        state, run = checkpoint["model_state_dict"], checkpoint.get("run")
        if reference is None:
            reference, reference_run = state, run
        else:
            _check_same_run(path, state, run, paths[0], reference, reference_run)
        for key, value in state.items():
            if value.is_floating_point():
                sums[key] = sums[key] + value.double() if key in sums else value.double()
        epochs.append(checkpoint.get("epoch"))
        newest, newest_run = state, run
    averaged = {key: sums[key].div_(len(paths)).to(value.dtype) if key in sums else value.clone()
                for key, value in newest.items()}
    return {"model_state_dict": averaged, "averaged_epochs": epochs,
            "averaged_from": [os.path.basename(path) for path in paths],
            **({"run": newest_run} if newest_run is not None else {})}


def save_averaged(path: str, checkpoint: dict) -> None:
    """Write an averaged checkpoint atomically; a name that the resume logic reads as a run's own state (an epoch
    checkpoint's or ``resume.state``) is refused, since a resume would then take it for a point to continue from."""
    name = os.path.basename(path)
    if CHECKPOINT_NAME.fullmatch(name) or name == RESUME_STATE:
        raise SpeakerNetError(f"{path}: that name is a training run's own checkpoint, which a resume would "
                              f"continue from; give the average another name (e.g. average_last3.model)")
    try:
        atomic.save_torch(checkpoint, path)
    except OSError as error:        # the atomic write has removed its temporary file; nothing else changed
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise SpeakerNetError(f"{path}: could not be saved ({reason}); the averaged checkpoints are unchanged") \
            from None


# ----------------------------------------------------------------------------------------------------------------
# The model a checkpoint holds
# ----------------------------------------------------------------------------------------------------------------

ORIGINAL_DEFAULTS = {"log_input": True, "audio_scale": "int16", "pad": "zero", "trainfunc": ""}
# voxceleb_trainer reads float samples in [-1, 1] and wraps a short file around; its published ResNetSE34V2
# checkpoints were trained with --log_input True (its README's command)
VOXCELEB_TRAINER_DEFAULTS = {"log_input": True, "audio_scale": "float", "pad": "wrap", "trainfunc": ""}


class _Family:
    """What a family of state dicts looks like: where its front end's buffers are, which key's shape gives the
    width that the pooling sees (SAP: fc input = width, ASP: 2 x width), its residual layouts (blocks per layer,
    stem channels) by model plugin, and the input pipeline it was trained with."""

    def __init__(self, front_end: str, pooled_key: str, pooled_axis: int, layouts: dict, defaults: dict):
        self.fb, self.window = f"__S__.{front_end}mel_scale.fb", f"__S__.{front_end}spectrogram.window"
        self.pooled_key, self.pooled_axis, self.layouts, self.defaults = pooled_key, pooled_axis, layouts, defaults


# The original's ResNetSE (torchfb is the MelSpectrogram; SAP/ASP through sap_linear) and voxceleb_trainer's
# ResNetSE34V2 (torchfb = PreEmphasis + MelSpectrogram; attention over the flattened map, attention.0 its first conv)
ORIGINAL = _Family("torchfb.", "__S__.sap_linear.weight", 0, {((3, 4, 6, 3), 16): "ResNetSE34L"}, ORIGINAL_DEFAULTS)
VOXCELEB_TRAINER = _Family("torchfb.1.", "__S__.attention.0.weight", 1, {((3, 4, 6, 3), 32): "ResNetSE34V2"},
                           VOXCELEB_TRAINER_DEFAULTS)


def _blocks(state: dict, layer: int) -> int:
    prefix = f"__S__.layer{layer}."
    return 1 + max((int(key[len(prefix):].split(".")[0]) for key in state if key.startswith(prefix)), default=-1)


def _window(window: torch.Tensor) -> str | None:
    for name, make in (("hann", torch.hann_window), ("hamming", torch.hamming_window)):
        if window.shape == (400,) and torch.allclose(window.float(), make(400), atol=1e-6):
            return name
    return None


# voxceleb_trainer's networks without a ResNet body, by a key no other layout has: RawNet3's sinc filterbank and
# VGGVox's convolution stack
RAWNET3_KEYS = ("__S__.conv1.filterbank.low_hz_", "__S__.fc6.weight", "__S__.attention.3.weight",
                "__S__.layer1.conv3.weight")
VGGVOX_KEYS = ("__S__.netcnn.0.weight", "__S__.fc.weight")


def _rawnet3_or_vggvox(state: dict) -> dict | None:
    """The options of voxceleb_trainer's RawNet3 or VGGVox as their keys say them (None for one they cannot tell:
    VGGVox's TAP and MAX have the same keys); None for another network."""
    if all(key in state for key in RAWNET3_KEYS):
        return {"model": "RawNet3", "nOut": state["__S__.fc6.weight"].shape[0],
                "encoder_type": "ASP" if state["__S__.attention.3.weight"].shape[0] == 1 else "ECA",
                "channels": state["__S__.layer1.conv3.weight"].shape[0]}
    if all(key in state for key in VGGVOX_KEYS):
        fb, window = state.get("__S__.torchfb.mel_scale.fb"), state.get("__S__.torchfb.spectrogram.window")
        return {"model": "VGGVox", "nOut": state["__S__.fc.weight"].shape[0],
                "encoder_type": "SAP" if "__S__.sap_linear.weight" in state else None,
                "n_mels": fb.shape[1] if fb is not None else None,
                "window": _window(window) if window is not None else None}
    return None


def infer_model_config(state: dict, source: str, given: dict | None = None) -> dict:
    """What the keys and shapes of an original ResNetSE, or a voxceleb_trainer ResNetSE34V2, RawNet3 or VGGVox state
    dict say about its model, with the input pipeline of the code that trained it. An option the keys cannot tell
    is an error unless ``given`` (the caller's overrides) holds it."""
    config, defaults = _rawnet3_or_vggvox(state), VOXCELEB_TRAINER_DEFAULTS
    if config is None:
        family = VOXCELEB_TRAINER if VOXCELEB_TRAINER.pooled_key in state else ORIGINAL
        needed = ["__S__.fc.weight", family.pooled_key, "__S__.conv1.weight", family.fb, family.window]
        missing = [key for key in needed if key not in state]
        if missing:
            raise SpeakerNetError(f"{source}: cannot tell the model from its keys (no {missing[0]}); give "
                                  f"model=..., encoder_type=..., nOut=... (--model, --encoder_type, --nOut)")
        layout = (tuple(_blocks(state, layer) for layer in (1, 2, 3, 4)), state["__S__.conv1.weight"].shape[0])
        width = state[family.pooled_key].shape[family.pooled_axis]
        pooled = state["__S__.fc.weight"].shape[1]
        config = {
            "model": family.layouts.get(layout),
            "encoder_type": {width: "SAP", 2 * width: "ASP"}.get(pooled),
            "nOut": state["__S__.fc.weight"].shape[0],
            "n_mels": state[family.fb].shape[1],
            "window": _window(state[family.window]),
        }
        defaults = family.defaults
    unknown = [key for key, value in config.items() if value is None and (given or {}).get(key) is None]
    if unknown:
        raise SpeakerNetError(f"{source}: cannot tell {', '.join(unknown)} from its keys; give "
                              + ", ".join(f"{key}=... (--{key})" for key in unknown))
    return {**defaults, **config}


def checkpoint_spec(checkpoint: dict, source: str, overrides: dict | None = None) -> ModelSpec:
    """The model a checkpoint holds: the spec its ``run`` entry records (either schema) or, for the original's and
    voxceleb_trainer's state dicts, what its keys say; ``overrides`` (not None) on top."""
    spec = ModelSpec.from_record(checkpoint.get("run") or {})
    if spec is None:
        spec = ModelSpec(**infer_model_config(checkpoint["model_state_dict"], source, overrides))
    return spec.overridden(**(overrides or {}))


def load_network(path: str, trust: bool = False, overrides: dict | None = None):
    """The embedding network of the checkpoint at ``path`` as a :class:`~spknet.model.SpeakerNet` without its loss,
    built from the options the checkpoint records (:func:`checkpoint_spec`) and loaded strictly: an override
    (``overrides``, e.g. ``{"nOut": 256}``) that does not fit the weights is an error naming it."""
    checkpoint = read_checkpoint(path, trust)
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    spec = checkpoint_spec(checkpoint, path, given)
    net = SpeakerNet(spec)
    try:
        load_model_state(net, checkpoint["model_state_dict"], path, prefixes=("__S__.",), strict=True)
    except SpeakerNetError as error:
        if not given:
            raise
        saved = checkpoint_spec(checkpoint, path)
        changed = [f"{key}={value} (the checkpoint's: {getattr(saved, key)})" for key, value in given.items()
                   if getattr(saved, key) != value] or [f"{key}={value}" for key, value in given.items()]
        changed = ", ".join(changed)
        raise SpeakerNetError(f"{path}: model option {changed} does not fit its weights; leave it out to use the "
                              f"checkpoint's own ({error})") from None
    return net
