"""The masked-proxy losses against the reference of ``benchmarks/reference_losses.py`` (float64): the original's
dense computation, with the masked centre table built and the imbalanced batches regrouped in Python."""

import math

import pytest
import torch
import torch.nn.functional as F

from benchmarks import reference_losses as reference
from spknet import plugins
from spknet.errors import SpeakerNetError
from spknet.loss._common import IMBALANCED

NAMES = ["mp", "mmp", "mp_balance", "mmp_balance", "mmp_balance2"]


def make_loss(name, classes=7, dim=5, seed=0):
    torch.manual_seed(seed)
    loss = plugins.load("loss", name)(nOut=dim, nSpeakers=classes).double()
    with torch.no_grad():
        loss.w.fill_(3.0)   # a moderate scale keeps every term away from saturation, so gradients are informative
    return loss


def reference_for(loss, x, labels):
    """The reference's loss value (the original's dense per-step computation)."""
    return reference.reference_loss(loss, x, labels)[0]


def batch_for(loss, seed=1, dim=5):
    generator = torch.Generator().manual_seed(seed)
    if loss.utterances_per_speaker == IMBALANCED:
        labels = torch.tensor([3, 0, 3, 5, 0, 3, 1, 5, 2])          # 2 and 3 per class, plus singletons 1 and 2
        x = torch.randn(len(labels), dim, generator=generator, dtype=torch.float64)
    else:
        labels = torch.tensor([4, 0, 6, 2])
        x = torch.randn(len(labels), 3, dim, generator=generator, dtype=torch.float64)
    return F.normalize(x, dim=-1).requires_grad_(True), labels


@pytest.mark.parametrize("name", NAMES)
def test_value_and_gradients_match_reference(name):
    loss = make_loss(name)
    x, labels = batch_for(loss)
    ours, _ = loss(x, labels)
    params = [x, loss.proxies, loss.w, loss.b]
    grads = torch.autograd.grad(ours, params)
    expected = reference_for(loss, x, labels)
    expected_grads = torch.autograd.grad(expected, params)
    assert torch.allclose(ours, expected, rtol=1e-10, atol=1e-12), (ours.item(), expected.item())
    for got, want in zip(grads, expected_grads):
        assert torch.allclose(got, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck(name):
    loss = make_loss(name)
    x, labels = batch_for(loss)
    assert torch.autograd.gradcheck(lambda inp: loss(inp, labels)[0], (x.detach().requires_grad_(),))


@pytest.mark.parametrize("name", ["mp", "mmp"])
def test_singletons_never_produce_nan(name):
    loss = make_loss(name)
    x = F.normalize(torch.randn(4, 5, dtype=torch.float64), dim=1).requires_grad_(True)
    for labels in (torch.tensor([0, 1, 2, 3]), torch.tensor([0, 0, 1, 2])):
        value, accuracy = loss(x, labels)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(accuracy)
        assert torch.isfinite(x.grad).all() and torch.isfinite(loss.proxies.grad).all()
        x.grad = None
        loss.zero_grad()
    value, _ = loss(x, torch.tensor([0, 1, 2, 3]))     # no group has an anchor: nothing to learn
    assert value.item() == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_batch_order_and_class_relabelling(name):
    """Permuting groups leaves the loss unchanged; so does renaming classes together with their proxies."""
    loss = make_loss(name)
    x, labels = batch_for(loss)
    value, _ = loss(x, labels)
    if loss.utterances_per_speaker == IMBALANCED:
        # keep the first utterance of each class first, so that queries stay the same
        order = torch.tensor([1, 0, 3, 6, 8, 4, 2, 5, 7])
    else:
        order = torch.tensor([2, 0, 3, 1])
    permuted, _ = loss(x[order], labels[order])
    assert torch.allclose(value, permuted, rtol=1e-12)
    mapping = torch.tensor([6, 4, 5, 0, 1, 3, 2])
    with torch.no_grad():
        proxies = loss.proxies.clone()
        loss.proxies[mapping] = proxies
    relabelled, _ = loss(x, mapping[labels])
    assert torch.allclose(value, relabelled, rtol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_accuracy_is_top1_against_masked_centres(name):
    loss = make_loss(name)
    x, labels = batch_for(loss, seed=6)     # a batch with right and wrong classifications in it
    _, accuracy = loss(x, labels)
    # The reference takes the argmax over its dense masked centre table, over the groups that have an anchor
    # (imbalanced: 1 of 3, not of 5 classes, the singletons do not count).
    _, expected = reference.reference_loss(loss, x, labels)
    assert 0.0 < expected.item() < 100.0
    assert accuracy.item() == pytest.approx(expected.item(), abs=1e-9)
    # identical query and anchor, far from every other centre: every query is classified correctly
    loss = make_loss(name, classes=4, dim=4)
    eye = torch.eye(4, dtype=torch.float64)
    if loss.utterances_per_speaker == IMBALANCED:
        x, labels = torch.cat([eye, eye]), torch.tensor([0, 1, 2, 3] * 2)
    else:
        x, labels = torch.stack([eye, eye], dim=1), torch.tensor([0, 1, 2, 3])
    assert loss(x, labels)[1].item() == 100.0


@pytest.mark.parametrize("name", NAMES)
def test_a_few_steps_lower_the_loss(name):
    loss = make_loss(name, classes=20, dim=16).float()
    x, labels = batch_for(loss, dim=16)
    x = x.detach().float().requires_grad_(True)
    optimizer = torch.optim.SGD([x, *loss.parameters()], lr=0.5)
    first = None
    for _ in range(20):
        value, _ = loss(F.normalize(x, dim=-1), labels)
        first = value.item() if first is None else first
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    assert math.isfinite(value.item()) and value.item() < first


def test_checkpoint_keys_and_initial_scalars():
    """The original's parameter names (w2/b2 only where it had them) and initial b of each variant."""
    expected_b = {"mp": -5.0, "mp_balance": -5.0, "mmp": -5.0, "mmp_balance": -5.0, "mmp_balance2": 5.0}
    for name, b in expected_b.items():
        loss = plugins.load("loss", name)(nOut=8, nSpeakers=3)
        keys = set(loss.state_dict())
        assert {"proxies", "w", "b"} <= keys
        assert ("w2" in keys) == name.startswith("mp")
        assert loss.b.item() == b and loss.w.item() == 10.0
        assert {n for n, _ in loss.named_parameters()} == {"proxies", "w", "b"}


@pytest.mark.parametrize("name", NAMES)
def test_init_w_keyword_sets_the_initial_scale(name):
    """``init_w`` is the keyword of every loss with a learned scale (as in voxceleb_trainer), keys unchanged."""
    loss = plugins.load("loss", name)(nOut=8, nSpeakers=3, init_w=4.0)
    assert loss.w.item() == 4.0
    if name.startswith("mp"):
        assert loss.w2.item() == 4.0 and loss.b2.item() == loss.b.item()
    assert set(loss.state_dict()) == set(plugins.load("loss", name)(nOut=8, nSpeakers=3).state_dict())
    pair = plugins.load("loss", "angleproto")(init_w=4.0, init_b=-2.0)
    assert (pair.w.item(), pair.b.item()) == (4.0, -2.0)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_proxies_and_scalars(name):
    """The proxy similarity has a hand-written backward: check it against finite differences."""
    loss = make_loss(name)
    x, labels = batch_for(loss)
    proxies = loss.proxies.detach().clone().requires_grad_(True)
    w = loss.w.detach().clone().requires_grad_(True)
    b = loss.b.detach().clone().requires_grad_(True)

    def value(p, w_, b_):
        return torch.func.functional_call(loss, {"proxies": p, "w": w_, "b": b_}, (x.detach(), labels))[0]

    assert torch.autograd.gradcheck(value, (proxies, w, b))


def test_no_valid_slot_is_lost_when_compacting():
    """Imbalanced batches keep half the utterances as slots: enough for every class with two or more."""
    loss = make_loss("mp", classes=12)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5])         # 6 pairs: exactly len // 2 valid slots
    x = F.normalize(torch.randn(12, 5, dtype=torch.float64), dim=1).requires_grad_(True)
    assert torch.allclose(loss(x, labels)[0], reference_for(loss, x, labels), rtol=1e-10)


@pytest.mark.parametrize("name", ["mp_balance", "mmp_balance", "mmp_balance2"])
@pytest.mark.parametrize("shape", [(4, 1, 5), (4, 5)])
def test_balanced_losses_refuse_groups_of_one_as_a_user_error(name, shape):
    loss = make_loss(name)
    x = torch.randn(*shape, dtype=torch.float64)
    with pytest.raises(SpeakerNetError, match=r"at least 2 utterances, got shape \(" + ", ".join(map(str, shape))):
        loss(x, torch.tensor([4, 0, 6, 2]))
