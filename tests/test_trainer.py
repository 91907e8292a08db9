"""The trainer's step on the CPU: channels-last convolutions, a step as accurate as the plain layout's, and weights
that any model loads."""

import copy

import torch

from spknet.model import SpeakerNet
from spknet.specs import TrainingSpec
from spknet.training.trainer import ModelTrainer


def one_step(net, batch):
    """The network's parameters before and after one SGD step of a CPU trainer, and the trainer."""
    trainer = ModelTrainer(net, torch.device("cpu"), TrainingSpec(optimizer="sgd", scheduler="steplr", lr=0.05))
    before = {name: value.detach().double().clone() for name, value in trainer.net.named_parameters()}
    progress = trainer.train_network([batch], epoch=1, show_progress=False)
    assert progress.finished and progress.steps == 1
    after = {name: value.detach().double() for name, value in trainer.net.named_parameters()}
    return {name: after[name] - before[name] for name in before}, trainer


def test_a_cpu_trainer_steps_in_channels_last_as_accurately_as_the_plain_layout_and_saves_the_plain_layout():
    torch.manual_seed(0)
    net = SpeakerNet.build(model="ResNetSE34L", trainfunc="mp_balance", nOut=16, nSpeakers=4)
    exact = copy.deepcopy(net).double()          # the reference step, in float64
    generator = torch.Generator().manual_seed(0)
    batch = (torch.randn(8, 4000, generator=generator) * 1000, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]),
             torch.tensor([2, 2, 2, 2]))
    update, trainer = one_step(net, batch)
    reference, _ = one_step(exact, batch)
    conv = trainer.net.__S__.layer1[0].conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    # BatchNorm's backward over 8 utterances cancels most digits: float32 in the plain layout is itself about 1 %
    # of the largest gradient away from float64 here, so 5 % separates rounding from a layout error (order 1).
    for name, step in update.items():
        scale = reference[name].abs().max().clamp_min(1e-12)
        assert (step - reference[name]).abs().max() / scale < 0.05, name

    saved = trainer.state_dict()["model_state_dict"]
    assert all(value.is_contiguous() for value in saved.values())
    loaded = SpeakerNet.build(model="ResNetSE34L", trainfunc="mp_balance", nOut=16, nSpeakers=4)
    loaded.load_state_dict(saved)
    assert loaded.__S__.layer1[0].conv1.weight.is_contiguous()
    with torch.no_grad():
        assert torch.allclose(loaded.eval().__S__(batch[0]), trainer.net.eval().__S__(batch[0]), atol=1e-5)
