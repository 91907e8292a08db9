"""BatchNorm folding for CPU inference: an eval-mode copy of a model with its BatchNorms folded into the
convolutions that feed them (:func:`inference_copy`).

A BatchNorm can be folded into a convolution only when it normalises that convolution's output and nothing else
reads (or modifies) that output in between. Which pairs qualify comes from, in this order:

1. **The model's declaration**: a method ``fusable_conv_bn_pairs()`` returning ``(conv name, norm name)`` pairs
   (names as in ``named_modules()``). The model knows its own data flow; this is the path of the ResNet-SE
   networks in ``models/``, whose forward fx cannot trace (``torch.autocast`` around the torchaudio front end).
2. **A torch.fx data-flow search** (:func:`traced_conv_bn_pairs`), for a model that declares nothing: a BatchNorm
   call whose input is a convolution call with no other user (an in-place ReLU in between, or a second read of
   the convolution's output, is another user), each module called once. Modules without a convolution or
   BatchNorm inside are not traced into (leaves), so a front end fx cannot trace (say torchaudio's) does not
   matter; a forward fx cannot trace anyway (data-dependent control flow, ``len`` of a tensor, ...) raises one
   of :data:`TRACE_ERRORS`, and that model gets no folding.

Either way only eval-mode pairs with running statistics are folded (``torch.nn.utils.fusion.fuse_conv_bn_eval``),
and the folds are kept only if the output on the example stays within the tolerance of the unfolded output;
otherwise the copy is returned unfolded.
"""

import copy
from collections.abc import Iterable

import torch
import torch.fx
from torch.nn.utils.fusion import fuse_conv_bn_eval

_CONVS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)

# What torch.fx raises on a forward it cannot trace symbolically: TraceError (a ValueError) for control flow on or
# iteration over a traced value, ValueError/TypeError from functions given a Proxy where they check their
# argument's type (``torch.autocast(device_type=x.device.type)``), RuntimeError for ``len`` of a traced value.
TRACE_ERRORS = (torch.fx.proxy.TraceError, ValueError, TypeError, RuntimeError)
# What copy.deepcopy raises on a model it cannot copy (an unpicklable attribute, a non-leaf tensor attribute).
COPY_ERRORS = (copy.Error, TypeError, RuntimeError)


def declared_pairs(model: torch.nn.Module) -> list[tuple[str, str]] | None:
    """The model's own ``fusable_conv_bn_pairs()``, or None when it declares none."""
    declare = getattr(model, "fusable_conv_bn_pairs", None)
    return None if declare is None else [(conv, norm) for conv, norm in declare()]


class _ConvNormTracer(torch.fx.Tracer):
    """Traces only as deep as needed: convolutions, BatchNorms and every module with neither inside are leaves."""

    def is_leaf_module(self, module: torch.nn.Module, qualified_name: str) -> bool:
        if isinstance(module, _CONVS + _NORMS):
            return True
        return not any(isinstance(inner, _CONVS + _NORMS) for inner in module.modules())


def traced_conv_bn_pairs(model: torch.nn.Module) -> list[tuple[str, str]] | None:
    """(conv name, norm name) of every BatchNorm whose input, in the fx graph of ``model``, is a convolution's
    output read by nothing else, both modules called only there and their tensors not read directly; None when fx
    cannot trace ``model``."""
    try:
        graph = _ConvNormTracer().trace(model)
    except TRACE_ERRORS:
        return None
    modules = dict(model.named_modules())
    calls = [node for node in graph.nodes if node.op == "call_module"]
    # parameters or buffers read directly (``F.conv2d(x, self.conv.weight)``): folding would change those reads
    read_directly = {node.target.rpartition(".")[0] for node in graph.nodes if node.op == "get_attr"}
    times_called: dict[str, int] = {}
    for node in calls:
        times_called[node.target] = times_called.get(node.target, 0) + 1
    pairs = []
    for node in calls:
        if type(modules[node.target]) not in _NORMS or not node.args:
            continue
        source = node.args[0]
        if (isinstance(source, torch.fx.Node) and source.op == "call_module"
                and type(modules[source.target]) in _CONVS and len(source.users) == 1
                and len(node.args) == 1 and not node.kwargs
                and times_called[source.target] == 1 and times_called[node.target] == 1
                and not {source.target, node.target} & read_directly):
            pairs.append((source.target, node.target))
    return pairs


def foldable(conv: torch.nn.Module, norm: torch.nn.Module) -> bool:
    """Whether ``fuse_conv_bn_eval`` can fold ``norm`` into ``conv`` now: a ConvNd and a BatchNormNd of the same
    dimension and channels, both in eval mode, the norm with running statistics."""
    kinds = [(c, n) for c, n in zip(_CONVS, _NORMS) if isinstance(conv, c)]
    return (bool(kinds) and isinstance(norm, kinds[0][1]) and conv.out_channels == norm.num_features
            and not conv.training and not norm.training
            and norm.running_mean is not None and norm.running_var is not None)


def candidate_pairs(model: torch.nn.Module) -> list[tuple[str, str]]:
    """The declared (else traced) pairs that can be folded now (:func:`foldable`). A declared name that is not a
    submodule of ``model`` is an error in the declaration (AttributeError)."""
    pairs = declared_pairs(model)
    if pairs is None:
        pairs = traced_conv_bn_pairs(model) or []
    return [(conv, norm) for conv, norm in pairs if foldable(model.get_submodule(conv), model.get_submodule(norm))]


def _replace(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _unique(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The pairs with no convolution or norm in two of them (a repeat would fold twice), first ones kept."""
    seen, kept = set(), []
    for conv, norm in pairs:
        if conv not in seen and norm not in seen:
            seen.update((conv, norm))
            kept.append((conv, norm))
    return kept


@torch.no_grad()
def fold_batch_norms(model: torch.nn.Module, example: torch.Tensor, tolerance: float = 1e-4) -> int:
    """Fold the :func:`candidate_pairs` of ``model`` in place; returns how many were folded.

    The folds are kept only if the output on ``example`` then stays within ``tolerance`` (relative to its largest
    value) of the unfolded model's; otherwise (a wrong declaration, a traced forward unlike the real one) the
    model is left as it was and 0 is returned.
    """
    pairs = _unique(candidate_pairs(model))
    if not pairs:
        return 0
    reference = model(example)
    originals = []
    for conv_name, norm_name in pairs:
        conv, norm = model.get_submodule(conv_name), model.get_submodule(norm_name)
        originals.append((conv, norm))
        _replace(model, conv_name, fuse_conv_bn_eval(conv, norm))
        _replace(model, norm_name, torch.nn.Identity())
    limit = tolerance * reference.abs().max().clamp_min(1e-6)
    if not (model(example) - reference).abs().max() <= limit:        # also undone on a NaN
        for (conv_name, norm_name), (conv, norm) in zip(pairs, originals):
            _replace(model, conv_name, conv)
            _replace(model, norm_name, norm)
        return 0
    return len(pairs)


def inference_copy(model: torch.nn.Module, example: torch.Tensor, channels_last: bool) -> torch.nn.Module:
    """A faster CPU copy of an eval-mode ``model``: its foldable BatchNorms folded into the convolutions
    (:func:`fold_batch_norms`, checked on ``example``) and, with ``channels_last``, in the channels-last memory
    format. ``model`` itself is not modified. A model ``copy.deepcopy`` cannot copy is returned as it is (there
    is nothing to fold it into); an error of the model's own forward on ``example`` is raised, not hidden."""
    try:
        fast = copy.deepcopy(model)
    except COPY_ERRORS:
        return model
    fold_batch_norms(fast, example)
    return fast.to(memory_format=torch.channels_last) if channels_last else fast
