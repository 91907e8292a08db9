"""Baseline losses (softmax ... proxynca): values against float64 loop references, gradients, invariances,
optimisation, shapes/dtypes and the construction contract."""

import importlib
import math

import pytest
import torch
from torch.func import functional_call

from spknet.errors import SpeakerNetError
from spknet.loss.triplet import mine_negatives

N_OUT = 5
N_SPEAKERS = 7  # != N_OUT: parameters with a dimension of this size are the per-speaker ones


# ----------------------------------------------------------------------------------------------------------------
# Plain-Python float64 references, one example at a time.
# ----------------------------------------------------------------------------------------------------------------

def dot(a, b):
    return sum(u * v for u, v in zip(a, b))


def norm(a):
    return math.sqrt(dot(a, a))


def cos(a, b):
    return dot(a, b) / (norm(a) * norm(b))


def sqdist(a, b):
    return sum((u - v) ** 2 for u, v in zip(a, b))


def mean_vec(vectors):
    return [sum(column) / len(vectors) for column in zip(*vectors)]


def cross_entropy(logits, target):
    top = max(logits)
    return top + math.log(sum(math.exp(v - top) for v in logits)) - logits[target]


def argmax(values):
    return max(range(len(values)), key=lambda i: values[i])


def average(losses_and_hits):
    """``[(loss, hit), ...]`` -> ``(mean loss, accuracy percent)``."""
    n = len(losses_and_hits)
    return sum(loss for loss, _ in losses_and_hits) / n, 100.0 * sum(hit for _, hit in losses_and_hits) / n


def utterances(x, labels):
    return [(utt, y) for group, y in zip(x, labels) for utt in group]


def params(module, prefix=""):
    return {k[len(prefix):]: v.tolist() for k, v in module.state_dict().items() if k.startswith(prefix)}


def ref_softmax(module, x, labels, prefix=""):
    p = params(module, prefix)
    weight, bias = p["fc.weight"], p["fc.bias"]
    out = []
    for utt, y in utterances(x, labels):
        logits = [dot(w, utt) + b for w, b in zip(weight, bias)]
        out.append((cross_entropy(logits, y), argmax(logits) == y))
    return average(out)


def ref_amsoftmax(module, x, labels):
    columns = list(zip(*params(module)["W"]))  # W is (nOut, nSpeakers)
    out = []
    for utt, y in utterances(x, labels):
        logits = [module.s * (cos(utt, w) - (module.m if c == y else 0.0)) for c, w in enumerate(columns)]
        out.append((cross_entropy(logits, y), argmax(logits) == y))
    return average(out)


def ref_aamsoftmax(module, x, labels):
    m, s = module.m, module.s
    out = []
    for utt, y in utterances(x, labels):
        logits = []
        for c, w in enumerate(params(module)["weight"]):
            c_th = max(-1.0, min(1.0, cos(utt, w)))
            if c != y:
                logits.append(s * c_th)
            elif math.acos(c_th) + m < math.pi:  # cos(theta + m) still decreasing in theta
                logits.append(s * math.cos(math.acos(c_th) + m))
            else:
                logits.append(s * (c_th - math.sin(math.pi - m) * m))
        out.append((cross_entropy(logits, y), argmax(logits) == y))
    return average(out)


def ref_angleproto(module, x, labels, prefix=""):
    p = params(module, prefix)
    w, b = p["w"], p["b"]
    anchors = [mean_vec(group[1:]) for group in x]
    out = []
    for i, group in enumerate(x):
        logits = [w * cos(group[0], a) + b for a in anchors]
        out.append((cross_entropy(logits, i), argmax(logits) == i))
    return average(out)


def ref_ge2e(module, x, labels):
    p = params(module)
    out = []
    for k, group in enumerate(x):
        for g, utt in enumerate(group):
            logits = []
            for m, other in enumerate(x):
                members = [u for h, u in enumerate(other) if not (m == k and h == g)]
                logits.append(p["w"] * max(cos(utt, mean_vec(members)), 1e-6) + p["b"])
            out.append((cross_entropy(logits, k), argmax(logits) == k))
    return average(out)


def ref_proto(module, x, labels):
    anchors = [mean_vec(group[1:]) for group in x]
    out = []
    for i, group in enumerate(x):
        logits = [-sqdist(group[0], a) for a in anchors]
        out.append((cross_entropy(logits, i), argmax(logits) == i))
    return average(out)


def ref_triplet_hardest(module, x, labels):
    """hard_rank 0, hard_prob 1: the negative is always the closest other positive."""
    unit = [[[v / norm(u) for v in u] for u in group] for group in x]
    out = []
    for i, (anchor, _positive) in enumerate(unit):
        distances = [sqdist(anchor, other[1]) for other in unit]
        negative = min((j for j in range(len(unit)) if j != i), key=lambda j: distances[j])
        loss = max(0.0, distances[i] - distances[negative] + module.margin)
        out.append((loss, argmax([-d for d in distances]) == i))
    return average(out)


def ref_softmaxproto(module, x, labels):
    loss_s, acc = ref_softmax(module, x, labels, prefix="softmax.")
    loss_p, _ = ref_angleproto(module, x, labels, prefix="angleproto.")
    return loss_s + loss_p, acc


def ref_proxyanchor(module, x, labels):
    proxies = params(module)["proxies"]
    alpha, margin = module.alpha, module.margin
    flat = utterances(x, labels)
    pos_total, neg_total, with_positives = 0.0, 0.0, 0
    for c, proxy in enumerate(proxies):
        pos = [math.exp(-alpha * (cos(u, proxy) - margin)) for u, y in flat if y == c]
        neg = [math.exp(alpha * (cos(u, proxy) + margin)) for u, y in flat if y != c]
        if pos:
            with_positives += 1
            pos_total += math.log(1.0 + sum(pos))
        neg_total += math.log(1.0 + sum(neg))
    loss = pos_total / with_positives + neg_total / len(proxies)
    hits = [argmax([cos(u, proxy) for proxy in proxies]) == y for u, y in flat]
    return loss, 100.0 * sum(hits) / len(hits)


def ref_proxynca(module, x, labels):
    proxies = params(module)["proxies"]
    s, n = module.scale, len(proxies)
    out = []
    for utt, y in utterances(x, labels):
        xs = [s * v / norm(utt) for v in utt]
        logits = [-sqdist(xs, [s * v / norm(p) for v in p]) for p in proxies]
        loss = sum((0.9 if c == y else 0.1 / (n - 1)) * cross_entropy(logits, c) for c in range(n))
        out.append((loss, argmax(logits) == y))
    return average(out)


# ----------------------------------------------------------------------------------------------------------------
# What each loss is expected to be.
# ----------------------------------------------------------------------------------------------------------------

class Spec:
    def __init__(self, name, reference, groups, *, train_normalize, test_normalize, kwargs=None,
                 scale_invariant=False, group_invariance=None):
        self.name = name
        self.reference = reference
        self.groups = groups  # valid utterances-per-speaker values to test; groups[0] is the class attribute
        self.train_normalize = train_normalize
        self.test_normalize = test_normalize
        self.kwargs = kwargs or {}
        self.scale_invariant = scale_invariant  # the loss only sees directions of the embeddings
        self.group_invariance = group_invariance  # utterances within a group that may be reordered: "all"/"support"

    def __repr__(self):
        return self.name

    def build(self, dtype=torch.float64, n_speakers=N_SPEAKERS, **overrides):
        module = importlib.import_module(f"loss.{self.name}")
        kwargs = {"nOut": N_OUT, "nSpeakers": n_speakers, "margin": None, "scale": None, **self.kwargs, **overrides}
        return module.LossFunction(**kwargs).to(dtype)


SPECS = [
    Spec("softmax", ref_softmax, (1, 2), train_normalize=False, test_normalize=True, group_invariance="all"),
    Spec("amsoftmax", ref_amsoftmax, (1, 2), train_normalize=False, test_normalize=True,
         scale_invariant=True, group_invariance="all"),
    Spec("aamsoftmax", ref_aamsoftmax, (1, 2), train_normalize=False, test_normalize=True,
         scale_invariant=True, group_invariance="all"),
    Spec("angleproto", ref_angleproto, (2, 3), train_normalize=True, test_normalize=True,
         scale_invariant=True, group_invariance="support"),
    Spec("ge2e", ref_ge2e, (2, 3), train_normalize=True, test_normalize=True,
         scale_invariant=True, group_invariance="all"),
    Spec("proto", ref_proto, (2, 3), train_normalize=False, test_normalize=False, group_invariance="support"),
    # Deterministic mining (always the hardest negative) so that the value is a function of the input.
    Spec("triplet", ref_triplet_hardest, (2,), train_normalize=True, test_normalize=True,
         kwargs={"hard_rank": 0, "hard_prob": 1.0}, scale_invariant=True),
    Spec("softmaxproto", ref_softmaxproto, (2, 3), train_normalize=False, test_normalize=True,
         group_invariance="support"),
    Spec("proxyanchor", ref_proxyanchor, (1, 2), train_normalize=True, test_normalize=True,
         scale_invariant=True, group_invariance="all"),
    Spec("proxynca", ref_proxynca, (1, 2), train_normalize=True, test_normalize=True,
         scale_invariant=True, group_invariance="all"),
]

all_specs = pytest.mark.parametrize("spec", SPECS, ids=repr)


def make_batch(batch, group, dtype=torch.float64, n_speakers=N_SPEAKERS, seed=0):
    assert batch <= n_speakers, "groups of a batch have distinct speakers"
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, group, N_OUT, generator=generator, dtype=dtype)
    label = torch.randperm(n_speakers, generator=generator)[:batch]
    return x, label


def randomise_parameters(module, seed=1):
    """Move trainable scalars (w, b) off their init so the reference exercises them too."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 0:
                p.add_(torch.rand((), generator=generator, dtype=p.dtype) - 0.5)
    return module


# ----------------------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def seeded():
    """Parameter initialisation and triplet mining draw from the global generator: make every test reproducible."""
    torch.manual_seed(0)


@all_specs
def test_contract_attributes(spec):
    module = importlib.import_module(f"loss.{spec.name}")
    cls = module.LossFunction
    assert type(cls.utterances_per_speaker) is int and cls.utterances_per_speaker == spec.groups[0]
    assert cls.train_normalize is spec.train_normalize
    assert cls.test_normalize is spec.test_normalize


@all_specs
def test_construct_from_full_namespace(spec):
    namespace = {
        "nOut": N_OUT, "nSpeakers": N_SPEAKERS, "margin": None, "scale": None, "hard_rank": 10, "hard_prob": 0.5,
        "model": "ResNetSE34V2", "batch_size": 200, "nPerSpeaker": 2, "lr": 0.001, "trainfunc": spec.name,
        "mixedprec": False, "some_future_option": object(),
    }
    loss = importlib.import_module(f"loss.{spec.name}").LossFunction(**namespace)
    x, label = make_batch(4, spec.groups[0], dtype=torch.float32)
    value, acc = loss(x, label)
    assert torch.isfinite(value) and 0.0 <= float(acc) <= 100.0


@pytest.mark.parametrize("name, attributes", [
    ("amsoftmax", {"m": 0.2, "s": 30.0}),
    ("aamsoftmax", {"m": 0.2, "s": 30.0}),
    ("triplet", {"margin": 0.1}),
    ("proxyanchor", {"margin": 0.1, "alpha": 30.0}),
    ("proxynca", {"scale": 3.0}),
])
def test_none_means_own_default_and_values_are_used(name, attributes):
    cls = importlib.import_module(f"loss.{name}").LossFunction
    default = cls(nOut=N_OUT, nSpeakers=N_SPEAKERS, margin=None, scale=None)
    given = cls(nOut=N_OUT, nSpeakers=N_SPEAKERS, margin=0.35, scale=12.0)
    for attribute, value in attributes.items():
        assert getattr(default, attribute) == pytest.approx(value)
        expected = 0.35 if attribute in ("m", "margin") else 12.0
        assert getattr(given, attribute) == pytest.approx(expected)


@all_specs
@pytest.mark.parametrize("batch", [4, 6])
def test_value_matches_loop_reference(spec, batch):
    for group in spec.groups:
        loss = randomise_parameters(spec.build())
        x, label = make_batch(batch, group, seed=batch + group)
        with torch.no_grad():
            value, acc = loss(x, label)
        expected_loss, expected_acc = spec.reference(loss, x.tolist(), label.tolist())
        assert value.dim() == 0 and acc.dim() == 0
        assert float(value) == pytest.approx(expected_loss, rel=1e-9, abs=1e-9)
        assert float(acc) == pytest.approx(expected_acc, abs=1e-9)


def test_aamsoftmax_fallback_branch_matches_reference():
    """Target angles beyond pi - margin take the ``cos - mm`` branch."""
    spec = next(s for s in SPECS if s.name == "aamsoftmax")
    loss = spec.build(margin=0.5)
    x, label = make_batch(4, 1)
    with torch.no_grad():
        x[0, 0] = -loss.weight[label[0]] * 2.0  # theta == pi for the first utterance
        x[1, 0] = -loss.weight[label[1]] + 0.05 * loss.weight[(label[1] + 1) % N_SPEAKERS]
    with torch.no_grad():
        value, _ = loss(x, label)
    assert float(value) == pytest.approx(spec.reference(loss, x.tolist(), label.tolist())[0], rel=1e-9)


@all_specs
def test_gradcheck_input_and_parameters(spec):
    loss = randomise_parameters(spec.build())
    x, label = make_batch(4, spec.groups[-1], seed=3)
    names = [name for name, _ in loss.named_parameters()]
    values = [p.detach().clone().requires_grad_() for _, p in loss.named_parameters()]

    def f(x, *parameters):
        return functional_call(loss, dict(zip(names, parameters)), (x, label))[0]

    assert torch.autograd.gradcheck(f, (x.requires_grad_(), *values), eps=1e-6, atol=1e-5, rtol=1e-4)


@all_specs
def test_invariant_to_batch_order(spec):
    loss = randomise_parameters(spec.build())
    x, label = make_batch(6, spec.groups[-1], seed=5)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(7))
    value, acc = loss(x, label)
    value_p, acc_p = loss(x[perm], label[perm])
    torch.testing.assert_close(value_p, value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(acc_p, acc)


@all_specs
def test_invariant_to_speaker_relabelling(spec):
    """Renaming the speakers (and moving each speaker's parameters along) leaves the loss unchanged."""
    loss = randomise_parameters(spec.build())
    x, label = make_batch(5, spec.groups[0], seed=9)
    value, acc = loss(x, label)
    perm = torch.randperm(N_SPEAKERS, generator=torch.Generator().manual_seed(11))  # speaker c -> perm[c]
    with torch.no_grad():
        for p in loss.parameters():
            for dim, size in enumerate(p.shape):
                if size == N_SPEAKERS:
                    moved = torch.empty_like(p)
                    moved.index_copy_(dim, perm, p)
                    p.copy_(moved)
    value_p, acc_p = loss(x, perm[label])
    torch.testing.assert_close(value_p, value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(acc_p, acc)


@pytest.mark.parametrize("spec", [s for s in SPECS if s.group_invariance], ids=repr)
def test_invariant_to_order_within_groups(spec):
    loss = randomise_parameters(spec.build())
    group = spec.groups[-1]
    x, label = make_batch(4, group, seed=13)
    value, _ = loss(x, label)
    if spec.group_invariance == "all":
        order = list(reversed(range(group)))
    else:  # only the support utterances (1..) may move; utterance 0 is the query
        order = [0] + list(reversed(range(1, group)))
    torch.testing.assert_close(loss(x[:, order], label)[0], value, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spec", [s for s in SPECS if s.scale_invariant], ids=repr)
def test_invariant_to_embedding_norms(spec):
    loss = randomise_parameters(spec.build())
    x, label = make_batch(5, spec.groups[-1], seed=15)
    # One factor per group: prototypes are means of raw embeddings, so only a common factor leaves them aligned.
    norms = torch.rand(5, 1, 1, generator=torch.Generator().manual_seed(1), dtype=x.dtype) * 4 + 0.1
    torch.testing.assert_close(loss(x * norms, label)[0], loss(x, label)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("spec", [s for s in SPECS if s.name in ("angleproto", "ge2e", "proto", "triplet")], ids=repr)
def test_pair_losses_ignore_labels(spec):
    loss = spec.build()
    x, label = make_batch(4, spec.groups[0])
    torch.testing.assert_close(loss(x, label)[0], loss(x, label.flip(0))[0])
    torch.testing.assert_close(loss(x, label)[0], loss(x, None)[0])


@all_specs
@pytest.mark.parametrize("optimiser", ["sgd", "adam"])
def test_optimisation_lowers_the_loss(spec, optimiser):
    torch.manual_seed(0)
    loss = spec.build(dtype=torch.float32)
    x, label = make_batch(6, spec.groups[0], dtype=torch.float32, seed=17)
    x = torch.nn.Parameter(x)
    parameters = [x, *loss.parameters()]
    opt = torch.optim.SGD(parameters, lr=0.05) if optimiser == "sgd" else torch.optim.Adam(parameters, lr=0.05)
    start = float(loss(x, label)[0].detach())
    for _ in range(25):
        opt.zero_grad()
        value, _ = loss(x, label)
        value.backward()
        opt.step()
    assert float(loss(x, label)[0].detach()) < start


@all_specs
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [2, 3, 17])
def test_any_batch_size_and_dtype(spec, dtype, batch):
    n_speakers = 23
    loss = spec.build(dtype=dtype, n_speakers=n_speakers)
    x, label = make_batch(batch, spec.groups[0], dtype=dtype, n_speakers=n_speakers, seed=batch)
    x.requires_grad_()
    value, acc = loss(x, label)
    assert value.dtype == dtype and value.dim() == 0 and acc.dim() == 0
    assert torch.isfinite(value.detach()) and 0.0 <= float(acc) <= 100.0
    value.backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in loss.parameters())


@pytest.mark.parametrize("name, group", [("angleproto", 1), ("ge2e", 1), ("proto", 1), ("triplet", 1),
                                         ("triplet", 3), ("softmaxproto", 1)])
def test_wrong_group_size_is_a_user_error(name, group):
    spec = next(s for s in SPECS if s.name == name)
    x, label = make_batch(4, group)
    with pytest.raises(SpeakerNetError, match=name):
        spec.build()(x, label)


def test_softmaxproto_is_the_sum_of_its_parts():
    spec = next(s for s in SPECS if s.name == "softmaxproto")
    loss = randomise_parameters(spec.build())
    x, label = make_batch(5, 2)
    s_value, s_acc = loss.softmax(x, label)
    p_value, _ = loss.angleproto(x, label)
    value, acc = loss(x, label)
    torch.testing.assert_close(value, s_value + p_value)
    torch.testing.assert_close(acc, s_acc)


@pytest.mark.parametrize("name", ["angleproto", "ge2e"])
def test_scale_w_is_clamped_positive(name):
    spec = next(s for s in SPECS if s.name == name)
    loss = spec.build()
    x, label = make_batch(4, 2)
    with torch.no_grad():
        loss.w.fill_(-3.0)
        loss.b.fill_(0.0)
        value, _ = loss(x, label)
    # w is floored at 1e-6: the logits are (nearly) equal, so the loss is log(batch).
    assert float(value) == pytest.approx(math.log(4), abs=1e-4)


def test_proxy_parameters_are_named_proxies():
    for name in ("proxyanchor", "proxynca"):
        loss = next(s for s in SPECS if s.name == name).build()
        assert [n for n, _ in loss.named_parameters()] == ["proxies"]
        assert tuple(loss.proxies.shape) == (N_SPEAKERS, N_OUT)


# ----------------------------------------------------------------------------------------------------------------
# Triplet mining
# ----------------------------------------------------------------------------------------------------------------

def similarity_matrix(batch, seed=0):
    generator = torch.Generator().manual_seed(seed)
    a = torch.nn.functional.normalize(torch.randn(batch, N_OUT, generator=generator), dim=1)
    p = torch.nn.functional.normalize(torch.randn(batch, N_OUT, generator=generator), dim=1)
    return -torch.cdist(a, p) ** 2


@pytest.mark.parametrize("hard_rank", [0, 2, 100])
def test_hard_mining_picks_within_the_top_ranks(hard_rank):
    batch = 6
    sim = similarity_matrix(batch)
    torch.manual_seed(0)
    draws = torch.stack([mine_negatives(sim, hard_rank, 1.0, 0.1) for _ in range(300)])
    for i in range(batch):
        ranked = sorted((j for j in range(batch) if j != i), key=lambda j: -float(sim[i, j]))
        allowed = set(ranked[: min(hard_rank, batch - 2) + 1])
        assert set(draws[:, i].tolist()) == allowed  # every allowed negative is drawn, nothing else


def test_random_mining_draws_every_negative_but_never_the_positive():
    batch = 5
    sim = similarity_matrix(batch, seed=1)
    torch.manual_seed(0)
    draws = torch.stack([mine_negatives(sim, 0, 0.0, 0.1) for _ in range(400)])
    for i in range(batch):
        assert set(draws[:, i].tolist()) == set(range(batch)) - {i}


def test_hard_prob_mixes_hard_and_random():
    batch = 8
    sim = similarity_matrix(batch, seed=2)
    torch.manual_seed(0)
    draws = torch.stack([mine_negatives(sim, 0, 0.5, 0.1) for _ in range(2000)])
    hardest = (sim - torch.eye(batch) * 1e9).argmax(dim=1)
    share = (draws == hardest).double().mean()
    # P(hardest) = 0.5 + 0.5 / (batch - 1)
    assert float(share) == pytest.approx(0.5 + 0.5 / (batch - 1), abs=0.03)


def test_semi_hard_mining():
    # Row 0: positive similarity -1.0; candidates with -1.0 - margin < s < -1.0 are columns 2 and 3.
    sim = torch.tensor([
        [-1.00, -0.50, -1.05, -1.08, -1.50],
        [-3.00, -0.20, -0.10, -0.90, -2.00],  # no semi-hard negative: anything but 1
        [-0.80, -0.78, -0.75, -0.10, -0.90],  # semi-hard: 0, 1 (-0.10 is harder than the positive, -0.90 too easy)
        [-1.00, -1.00, -1.00, -1.00, -1.00],  # ties with the positive are not semi-hard
        [-0.30, -0.35, -0.90, -0.33, -0.31],  # semi-hard: 1 (between -0.41 and -0.31 exclusive)
    ])
    torch.manual_seed(0)
    draws = torch.stack([mine_negatives(sim, -1, 0.5, 0.1) for _ in range(300)])
    assert set(draws[:, 0].tolist()) == {2, 3}
    assert set(draws[:, 1].tolist()) == {0, 2, 3, 4}
    assert set(draws[:, 2].tolist()) == {0, 1}
    assert set(draws[:, 3].tolist()) == {0, 1, 2, 4}
    assert set(draws[:, 4].tolist()) == {1, 3}


def test_triplet_default_mining_is_reproducible_and_trains():
    loss = next(s for s in SPECS if s.name == "triplet").build(hard_rank=10, hard_prob=0.5)
    x, label = make_batch(12, 2, dtype=torch.float32, n_speakers=23)
    torch.manual_seed(3)
    first = loss(x, label)[0]
    torch.manual_seed(3)
    torch.testing.assert_close(loss(x, label)[0], first)
    semi = next(s for s in SPECS if s.name == "triplet").build(hard_rank=-1)
    assert torch.isfinite(semi(x, label)[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@all_specs
def test_no_host_synchronisation_on_cuda(spec):
    loss = spec.build(dtype=torch.float32, n_speakers=23).cuda()
    x, label = make_batch(8, spec.groups[0], dtype=torch.float32, n_speakers=23)
    x, label = x.cuda().requires_grad_(), label.cuda()
    loss(x, label)  # warm-up (lazy initialisation may synchronise)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        value, acc = loss(x, label)
        value.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert acc.device.type == "cuda"
