"""Starting a new training run from another model's weights (``--initial_model``): fine-tuning.

The initial model's embedding network (``__S__.*``) is loaded whole or not at all: its recorded options (or, for
the original's checkpoints, what its keys say) must be the run's, and every key must fit. Its loss head (``__L__.*``)
is loaded only when it is the run's loss for the run's classes (for a checkpoint that records neither, the
original's, when its head's keys and shapes are the run's); otherwise the run's head starts fresh (another
speaker set, another loss, an imported model without a head). One INFO line says which; the checkpoint's run
entry records the initial model's path and SHA-256 (:meth:`InitialModel.record`).
"""

from dataclasses import dataclass, fields

import torch

from spknet.checkpoints import checkpoint_spec, read_checkpoint
from spknet.errors import SpeakerNetError
from spknet.files import file_digest
from spknet.identity import identity_fields
from spknet.model import SpeakerNet
from spknet.specs import ModelSpec, flag_name

NETWORK = "__S__."
HEAD = "__L__."
SHOWN_DIGEST = 12       # hex digits of the SHA-256 in the INFO line (the checkpoint keeps all 64)


@dataclass(frozen=True)
class InitialModel:
    """What a run took from its initial model: the file, its digest, the network's spec, and whether the loss head
    was loaded (``head_reason``: why it starts fresh, or None when loaded)."""
    path: str
    sha256: str
    network: ModelSpec
    head_reason: str | None

    def record(self) -> dict:
        """The checkpoint's ``run["initial_model"]``."""
        return {"path": self.path, "sha256": self.sha256}

    def describe(self) -> str:
        """The one INFO line of the start."""
        options = ", ".join(f"{key} {value}" for key, value in self.network.network_options().items())
        head = "loaded" if self.head_reason is None else f"starts fresh because {self.head_reason}"
        return (f"Initial model {self.path} (sha256 {self.sha256[:SHOWN_DIGEST]}): loaded network "
                f"{self.network.model} ({options}); loss head: {head}")


def _split(state: dict, prefix: str) -> dict:
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def _spec_differences(saved: ModelSpec, run: ModelSpec) -> list[str]:
    """``--nOut 256 (the initial model's), 512 (this run's)`` for each model option (the loss aside) that differs."""
    saved, run = saved.resolved(), run.resolved()
    return [f"{flag_name(item.name)} {getattr(saved, item.name)} (the initial model's), {getattr(run, item.name)} "
            f"(this run's)" for item in fields(ModelSpec)
            if item.name != "trainfunc" and getattr(saved, item.name) != getattr(run, item.name)]


def _copy_strictly(module: torch.nn.Module, state: dict, path: str, what: str) -> None:
    """Every key of ``module`` from ``state`` with its shape and every key of ``state`` used, or an error naming
    the first that is not (nothing copied then)."""
    own = module.state_dict()
    unused = [key for key in state if key not in own]
    missing = [key for key in own if key not in state]
    misshapen = [f"{key} (file {tuple(state[key].shape)}, this run {tuple(own[key].shape)})"
                 for key in state if key in own and state[key].shape != own[key].shape]
    for problem, keys in (("has key(s) this run's network lacks", unused), ("lacks key(s)", missing),
                          ("has key(s) of another shape", misshapen)):
        if keys:
            raise SpeakerNetError(f"--initial_model {path}: its {what} {problem}: {what}.{keys[0]}"
                                  f"{f' and {len(keys) - 1} more' if len(keys) > 1 else ''}")
    module.load_state_dict(state, strict=True)


def _head_reason(checkpoint: dict, saved: ModelSpec | None, head: dict, net: SpeakerNet, classes: int,
                 path: str) -> str | None:
    """Why the run's loss head starts fresh, or None when the initial model's is the run's: the same loss for the
    same classes, with the same keys and shapes (only those, for a checkpoint that does not record its loss)."""
    if not head:
        imported = checkpoint.get("imported")
        return f"{path} has no head" + (f" (imported from {imported['toolkit']}, its classifier dropped)"
                                         if imported else "")
    loss = saved.trainfunc if saved is not None else ""
    saved_classes = identity_fields(checkpoint.get("run") or {}).get("classes")
    this_run = f"this run trains {net.spec.trainfunc} for {classes} classes"
    recorded = bool(loss) and saved_classes is not None
    if recorded and (loss, saved_classes) != (net.spec.trainfunc, classes):
        return f"{path}'s head is {loss} for {saved_classes} classes, {this_run}"
    own = net.__L__.state_dict()
    if set(head) != set(own) or any(head[key].shape != own[key].shape for key in head):
        # a checkpoint that does not record its loss (the original's) is judged by its head's tensors alone
        what = f"({loss} for {saved_classes} classes)" if recorded else "(its loss not recorded)"
        return f"{path}'s head {what} has other tensors than the one {this_run}"
    return None


def load_initial_model(net: SpeakerNet, path: str, classes: int, trust: bool = False) -> InitialModel:
    """Load ``path`` into the new run's ``net`` (its loss built for ``classes``): the network by spec (an option
    that differs from the run's is an error naming it), the loss head when it is the run's."""
    checkpoint = read_checkpoint(path, trust)
    state = checkpoint["model_state_dict"]
    network, head = _split(state, NETWORK), _split(state, HEAD)
    if not network:
        raise SpeakerNetError(f"--initial_model {path}: no embedding network in it (no {NETWORK}* key)")
    try:
        saved = checkpoint_spec(checkpoint, path)
    except SpeakerNetError:     # the original's keys of a network they cannot tell: the strict load decides
        saved = None
    if saved is not None:
        differences = _spec_differences(saved, net.spec)
        if differences:
            raise SpeakerNetError(f"--initial_model {path} is another network than this run's: "
                                  f"{'; '.join(differences)}. Give the initial model's options to fine-tune it")
    _copy_strictly(net.__S__, network, path, NETWORK.rstrip("."))
    reason = _head_reason(checkpoint, saved, head, net, classes, path)
    if reason is None:
        net.__L__.load_state_dict(head, strict=True)
    return InitialModel(path, file_digest(path), net.spec, reason)


__all__ = ["InitialModel", "load_initial_model"]
