"""BatchNorm folding (spknet.folding): declared pairs on the ResNet-SE networks, the torch.fx data-flow search for
models that declare none, no folding for models that are neither, the check on the output, the model untouched."""

import copy
import threading

import pytest
import torch
import torch.nn.functional as F

from spknet import folding
from spknet.models._resnet_se import SEBasicBlock
from spknet.models.ResNetSE34L import MainModel

pytestmark = pytest.mark.usefixtures("one_thread")        # conftest's: small forward passes on a shared box


def randomise_batch_norms(model, seed=0):
    """Running statistics and affine parameters away from the identity, so that a wrong fold shows; eval mode."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.running_mean.normal_(0, 0.5, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
            module.weight.data.uniform_(0.5, 1.5, generator=generator)
            module.bias.data.normal_(0, 0.5, generator=generator)
    return model.eval()


def batch_norms(model):
    return sum(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in model.modules())


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(name, type(m), m.training) for name, m in model.named_modules()],
            [p.is_contiguous() for p in model.parameters()])


def assert_unchanged(model, before):
    state, structure, contiguous = snapshot(model)
    assert structure == before[1] and contiguous == before[2]
    assert state.keys() == before[0].keys() and all(torch.equal(state[k], before[0][k]) for k in state)


# ---- the declared pairs of the ResNet-SE networks ---------------------------------------------------------------

@pytest.mark.parametrize("encoder_type", ["SAP", "ASP"])
@pytest.mark.parametrize("channels_last", [True, False])
def test_resnet_folds_its_declared_pairs_and_keeps_its_embeddings(encoder_type, channels_last):
    torch.manual_seed(0)
    model = randomise_batch_norms(MainModel(nOut=32, encoder_type=encoder_type))
    before = snapshot(model)
    waves = torch.randn(3, 8240) * 1000
    declared = model.fusable_conv_bn_pairs()
    # the stem, every block's conv2 -> bn2 (3 + 4 + 6 + 3 blocks) and the 3 downsampling shortcuts
    assert len(declared) == 1 + 16 + 3 and len(set(declared)) == len(declared)
    assert folding.fold_batch_norms(copy.deepcopy(model), waves[:2]) == len(declared)

    fast = folding.inference_copy(model, waves[:2], channels_last=channels_last)
    assert batch_norms(model) - batch_norms(fast) == len(declared)
    for conv, norm in declared:
        assert isinstance(fast.get_submodule(norm), torch.nn.Identity)
        assert isinstance(fast.get_submodule(conv), torch.nn.Conv2d) and fast.get_submodule(conv).bias is not None
    # every SE block's bn1 runs after the in-place ReLU on conv1's output: not folded
    blocks = [m for m in fast.modules() if isinstance(m, SEBasicBlock)]
    assert len(blocks) == 16
    assert all(isinstance(b.bn1, torch.nn.BatchNorm2d) and isinstance(b.bn2, torch.nn.Identity) for b in blocks)
    assert fast.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    with torch.no_grad():
        assert relative_error(fast(waves), model(waves)) < 1e-4
    assert_unchanged(model, before)


def test_the_block_declarations_agree_with_the_traced_data_flow():
    """fx cannot trace the whole network (torch.autocast around the front end), but it traces a block: its data
    flow gives exactly the declared pairs, without conv1 -> in-place ReLU -> bn1."""
    model = MainModel(nOut=32).eval()
    assert folding.traced_conv_bn_pairs(model) is None
    blocks = [m for m in model.modules() if isinstance(m, SEBasicBlock)]
    assert any(b.downsample is not None for b in blocks)
    for block in blocks:
        assert set(folding.traced_conv_bn_pairs(block)) == set(block.fusable_conv_bn_pairs())


def test_training_mode_batch_norms_are_not_folded():
    model = randomise_batch_norms(MainModel(nOut=32))
    model.layer1[0].bn2.train()
    pairs = folding.candidate_pairs(model)
    assert ("layer1.0.conv2", "layer1.0.bn2") not in pairs and len(pairs) == 19


# ---- the fx search for models that declare nothing --------------------------------------------------------------

class ConvNorms(torch.nn.Module):
    """Undeclared and fx-traceable: a conv feeding a norm under names no naming rule would pair, then a conv
    whose output is read once more (``mode``): by the output, by an in-place ReLU, or the conv called twice."""

    def __init__(self, mode: str = "plain"):
        super().__init__()
        self.mode = mode
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1))
        self.after = torch.nn.BatchNorm2d(4)
        self.shared = torch.nn.Conv2d(4, 4, 1)
        self.norm = torch.nn.BatchNorm2d(4)

    def forward(self, waves):
        x = self.after(self.features(waves.reshape(-1, 1, 4, 16)))
        y = self.shared(x)
        if self.mode == "read_twice":
            out = self.norm(y) + y
        elif self.mode == "in_place":
            F.relu(y, inplace=True)
            out = self.norm(y)
        elif self.mode == "called_twice":
            out = self.norm(y) + self.shared(x)
        elif self.mode == "weight_read":
            out = self.norm(y) + F.conv2d(x, self.shared.weight)
        else:
            out = self.norm(y)
        return out.flatten(1)


def test_undeclared_traceable_model_is_folded_by_its_data_flow():
    model = randomise_batch_norms(ConvNorms())
    before = snapshot(model)
    waves = torch.randn(2, 64)
    assert sorted(folding.traced_conv_bn_pairs(model)) == [("features.0", "after"), ("shared", "norm")]
    fast = folding.inference_copy(model, waves, channels_last=False)
    assert isinstance(fast.after, torch.nn.Identity) and isinstance(fast.norm, torch.nn.Identity)
    with torch.no_grad():
        assert relative_error(fast(waves), model(waves)) < 1e-5
    assert_unchanged(model, before)


@pytest.mark.parametrize("mode", ["read_twice", "in_place", "called_twice", "weight_read"])
def test_a_conv_whose_output_is_also_used_elsewhere_is_not_folded(mode):
    model = randomise_batch_norms(ConvNorms(mode))
    waves = torch.randn(2, 64)
    assert folding.traced_conv_bn_pairs(model) == [("features.0", "after")]
    fast = folding.inference_copy(model, waves, channels_last=False)
    assert isinstance(fast.after, torch.nn.Identity) and isinstance(fast.norm, torch.nn.BatchNorm2d)
    with torch.no_grad():
        assert relative_error(fast(waves), model(waves)) < 1e-5


class PreActivation(torch.nn.Module):
    """Named like a ResNet block, but the norm runs *before* its convolution: folding would be wrong."""

    def __init__(self):
        super().__init__()
        self.bn1 = torch.nn.BatchNorm2d(1)
        self.conv1 = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, waves):
        return self.conv1(self.bn1(waves.reshape(-1, 1, 4, 16))).flatten(1)

def test_a_norm_before_its_conv_is_not_folded():
    model = randomise_batch_norms(PreActivation())
    model.bn1.running_mean.fill_(3.0)
    waves = torch.randn(2, 64)
    fast = folding.inference_copy(model, waves, channels_last=False)
    assert isinstance(fast.bn1, torch.nn.BatchNorm2d)
    with torch.no_grad():
        assert torch.equal(fast(waves), model(waves))


class Untraceable(ConvNorms):
    """Undeclared, and fx cannot trace it: ``len`` of a traced value (RuntimeError) or control flow on one."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how

    def forward(self, waves):
        if self.how == "len":
            waves = waves.view(len(waves), 64)
        elif waves.abs().sum() > 0:
            waves = waves * 1.0
        return super().forward(waves)


@pytest.mark.parametrize("how", ["len", "control_flow"])
def test_a_model_neither_declared_nor_traceable_is_not_folded(how):
    model = randomise_batch_norms(Untraceable(how))
    waves = torch.randn(2, 64)
    assert folding.traced_conv_bn_pairs(model) is None
    fast = folding.inference_copy(model, waves, channels_last=False)
    assert fast is not model and batch_norms(fast) == 2
    with torch.no_grad():
        assert torch.equal(fast(waves), model(waves))


class Broken(ConvNorms):
    def forward(self, waves):
        raise KeyError("a bug in the model")


def test_other_errors_are_not_swallowed():
    with pytest.raises(KeyError, match="a bug in the model"):
        folding.inference_copy(randomise_batch_norms(Broken()), torch.randn(2, 64), channels_last=False)


# ---- a wrong declaration, an uncopyable model ---------------------------------------------------------------------

class WronglyDeclared(ConvNorms):
    """Declares shared -> norm although the conv's output also bypasses the norm."""

    def __init__(self):
        super().__init__("read_twice")

    def fusable_conv_bn_pairs(self):
        return [("features.0", "after"), ("shared", "norm")]


def test_a_wrong_declaration_is_undone_by_the_output_check():
    model = randomise_batch_norms(WronglyDeclared())
    waves = torch.randn(2, 64)
    assert folding.fold_batch_norms(copy.deepcopy(model), waves) == 0
    fast = folding.inference_copy(model, waves, channels_last=False)
    assert isinstance(fast.after, torch.nn.BatchNorm2d) and isinstance(fast.norm, torch.nn.BatchNorm2d)
    with torch.no_grad():
        assert torch.equal(fast(waves), model(waves))


def test_a_declared_name_that_does_not_exist_is_an_error():
    model = randomise_batch_norms(ConvNorms())
    model.fusable_conv_bn_pairs = lambda: [("features.0", "missing")]
    with pytest.raises(AttributeError):
        folding.inference_copy(model, torch.randn(2, 64), channels_last=False)


def test_a_model_that_cannot_be_copied_is_returned_as_it_is():
    model = randomise_batch_norms(ConvNorms())
    model.lock = threading.Lock()                   # deepcopy: TypeError, cannot pickle '_thread.lock'
    assert folding.inference_copy(model, torch.randn(2, 64), channels_last=True) is model
    assert isinstance(model.norm, torch.nn.BatchNorm2d)
