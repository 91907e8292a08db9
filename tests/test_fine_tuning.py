"""Fine-tuning (``--initial_model`` into a new run, ``--freeze_epochs``, ``--network_lr_scale``): what is loaded
and what starts fresh, the frozen network (BatchNorm statistics included), the LR ratio under every kind of
schedule, and a run that records where it started and resumes exactly."""

import logging

import pytest
import torch
import yaml

import trainSpeakerNet
from spknet.checkpoints import read_checkpoint
from spknet.errors import SpeakerNetError
from spknet.files import file_digest
from spknet.importing import import_checkpoint
from spknet.model import SpeakerNet
from spknet.specs import LossSpec, ModelSpec, TrainingSpec
from spknet.training.initial import load_initial_model
from spknet.training.trainer import ModelTrainer
from tests.helpers import saved_run_checkpoint
from tests.oracles import wespeaker_config, wespeaker_layout_file

SMALL = ["--model", "ResNetSE34L", "--nOut", "16", "--optimizer", "sgd", "--lr", "0.05"]


def new_run_net(trainfunc: str, classes: int, **options) -> SpeakerNet:
    return SpeakerNet(ModelSpec(model="ResNetSE34L", trainfunc=trainfunc, nOut=16, **options), LossSpec(classes))


def differs(first: SpeakerNet, second: SpeakerNet, prefix: str) -> bool:
    own = second.state_dict()
    return any(not torch.equal(value, own[key]) for key, value in first.state_dict().items()
               if key.startswith(prefix) and value.is_floating_point())


def bump(net: SpeakerNet) -> None:
    """Weights unlike a fresh network's, so that a load is visible."""
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.5)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint as a run saves it: ResNetSE34L nOut 16, mp_balance for 4 classes, weights moved off the init."""
    path = tmp_path_factory.mktemp("initial") / "model000000001.model"
    net = saved_run_checkpoint([*SMALL, "--trainfunc", "mp_balance", "--nSpeakers", "4"], path, randomise=bump)
    return str(path), net


def test_the_same_loss_and_classes_load_the_head_and_one_info_line_says_so(saved, logged):
    path, source = saved
    net = new_run_net("mp_balance", 4)
    loaded = load_initial_model(net, path, 4)
    assert not differs(net, source, "__S__.") and not differs(net, source, "__L__.")
    assert loaded.head_reason is None and loaded.sha256 == file_digest(path)
    assert loaded.record() == {"path": path, "sha256": file_digest(path)}
    assert loaded.describe() == (f"Initial model {path} (sha256 {file_digest(path)[:12]}): loaded network ResNetSE34L "
                                 f"(encoder_type SAP, nOut 16, n_mels 40, log_input True, window hann, frontend "
                                 f"logmel); loss head: loaded")
    assert not [record for record in logged.records if record.levelno >= logging.WARNING]


@pytest.mark.parametrize("trainfunc, classes", [("mp_balance", 6), ("aamsoftmax", 4)])
def test_another_speaker_set_or_loss_starts_a_fresh_head_and_says_why(saved, trainfunc, classes):
    path, source = saved
    torch.manual_seed(0)
    fresh = new_run_net(trainfunc, classes)
    torch.manual_seed(0)
    net = new_run_net(trainfunc, classes)
    loaded = load_initial_model(net, path, classes)
    assert not differs(net, source, "__S__.")
    assert not differs(net, fresh, "__L__.")           # the head is the run's own initialisation, untouched
    assert loaded.head_reason == (f"{path}'s head is mp_balance for 4 classes, this run trains {trainfunc} for "
                                  f"{classes} classes")
    assert "loss head: starts fresh because" in loaded.describe()


def test_another_network_is_an_error_naming_each_option(saved):
    path, _ = saved
    with pytest.raises(SpeakerNetError, match=r"--nOut 16 \(the initial model's\), 32 \(this run's\); --window hann "
                                              r"\(the initial model's\), hamming \(this run's\)"):
        load_initial_model(SpeakerNet(ModelSpec(model="ResNetSE34L", trainfunc="mp_balance", nOut=32,
                                                window="hamming"), LossSpec(4)), path, 4)


def test_an_imported_model_has_no_head_and_its_network_loads(tmp_path, logged):
    out = str(tmp_path / "imported.model")
    import_checkpoint("wespeaker", wespeaker_layout_file(tmp_path), out, wespeaker_config(tmp_path))
    spec = ModelSpec(model="ResNet18", trainfunc="aamsoftmax", nOut=32, n_mels=80, frontend="kaldi_fbank",
                     window="hamming", channels=8, encoder_type="TSTP")
    net = SpeakerNet(spec, LossSpec(5))
    loaded = load_initial_model(net, out, 5)
    state = read_checkpoint(out)["model_state_dict"]
    assert all(torch.equal(net.state_dict()[key], value) for key, value in state.items())
    assert loaded.head_reason == f"{out} has no head (imported from wespeaker, its classifier dropped)"
    assert not [record for record in logged.records if record.levelno >= logging.WARNING]


def test_the_originals_flat_checkpoint_is_told_by_its_keys_and_its_head_by_its_tensors(random_checkpoint):
    """It records neither its network nor its loss: its keys say the network, and its head loads when its tensors
    are the run's (mp_balance for 40 classes), else starts fresh."""
    state = torch.load(random_checkpoint, weights_only=True)
    net = SpeakerNet(ModelSpec(model="ResNetSE34L", trainfunc="mp_balance", nOut=16), LossSpec(40))
    assert load_initial_model(net, str(random_checkpoint), 40).head_reason is None
    assert all(torch.equal(net.state_dict()[key], value) for key, value in state.items())
    other = SpeakerNet(ModelSpec(model="ResNetSE34L", trainfunc="mp_balance", nOut=16), LossSpec(30))
    assert load_initial_model(other, str(random_checkpoint), 30).head_reason == (
        f"{random_checkpoint}'s head (its loss not recorded) has other tensors than the one this run trains "
        f"mp_balance for 30 classes")


# ---- the trainer -------------------------------------------------------------------------------------------------

def batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(8, 4000, generator=generator) * 1000, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]),
            torch.tensor([2, 2, 2, 2]))


def snapshot(module: torch.nn.Module) -> dict:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def test_a_frozen_epoch_trains_the_head_alone_and_keeps_batchnorm_statistics_bit_identical(one_thread):
    torch.manual_seed(0)
    net = SpeakerNet.build(model="ResNetSE34L", trainfunc="aamsoftmax", nOut=16, nSpeakers=4)
    trainer = ModelTrainer(net, torch.device("cpu"), TrainingSpec(optimizer="sgd", scheduler="steplr", lr=0.05,
                                                                  freeze_epochs=1))
    network, head = snapshot(net.__S__), snapshot(net.__L__)
    assert trainer.train_network([batch(0), batch(1)], epoch=1, show_progress=False).steps == 2
    assert all(torch.equal(value, net.__S__.state_dict()[key]) for key, value in network.items())
    assert any(not torch.equal(value, net.__L__.state_dict()[key]) for key, value in head.items())
    trainer.train_network([batch(2)], epoch=2, show_progress=False)
    after = net.__S__.state_dict()
    assert not torch.equal(network["layer1.0.conv1.weight"], after["layer1.0.conv1.weight"])
    assert not torch.equal(network["layer1.0.bn1.running_mean"], after["layer1.0.bn1.running_mean"])


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")   # no training step here
@pytest.mark.parametrize("scheduler, options", [("steplr", {"lr_decay": 0.5}), ("plateau", {}),
                                                ("warmup_cosine", {"warmup_epochs": 1.0, "max_epoch": 3})])
def test_every_kind_of_schedule_keeps_the_networks_lr_at_its_scale_of_the_heads(scheduler, options):
    net = SpeakerNet.build(model="ResNetSE34L", trainfunc="aamsoftmax", nOut=16, nSpeakers=4)
    trainer = ModelTrainer(net, torch.device("cpu"), TrainingSpec(optimizer="adam", scheduler=scheduler, lr=0.01,
                                                                  network_lr_scale=0.1, **options), steps_per_epoch=4)
    network, head = trainer.optimizer.param_groups
    assert {id(p) for p in network["params"]} == {id(p) for p in net.__S__.parameters()}
    assert {id(p) for p in head["params"]} == {id(p) for p in net.__L__.parameters()}
    seen = set()
    for _ in range(12):
        if trainer.per_iteration:
            trainer.scheduler.step()
        else:
            trainer.step_schedule(50.0)      # the plateau schedule sees no improvement: it decays
        assert network["lr"] == pytest.approx(0.1 * head["lr"], rel=1e-12) and trainer.lr == head["lr"]
        seen.add(round(head["lr"], 12))
    assert len(seen) > 1                     # the schedule did move


def test_a_scale_of_one_keeps_the_originals_one_group():
    net = SpeakerNet.build(model="ResNetSE34L", trainfunc="aamsoftmax", nOut=16, nSpeakers=4)
    trainer = ModelTrainer(net, torch.device("cpu"), TrainingSpec(optimizer="sgd", scheduler="steplr", lr=0.01))
    assert len(trainer.optimizer.param_groups) == 1


# ---- the command line --------------------------------------------------------------------------------------------

def corpus_flags(corpus) -> list[str]:
    return [f"--{key}={value}" for key, value in corpus.items()]


@pytest.mark.parametrize("flags, message", [
    (["--trainfunc", "angleproto", "--freeze_epochs", "1"], "--freeze_epochs 1: --trainfunc angleproto has no class"),
    (["--trainfunc", "proto", "--network_lr_scale", "0.1"], "--network_lr_scale 0.1: --trainfunc proto has no"),
    (["--trainfunc", "aamsoftmax", "--network_lr_scale", "0"], "--network_lr_scale 0 must be above 0"),
])
def test_fine_tuning_flags_a_loss_cannot_use_are_errors(tiny_corpus, tmp_path, capsys, flags, message):
    assert trainSpeakerNet.main([*SMALL, *flags, *corpus_flags(tiny_corpus), "--save_path", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


@pytest.mark.slow
def test_a_fine_tuning_run_records_its_start_and_resumes_exactly(tiny_corpus, tmp_path, one_thread, capsys):
    """Pre-train one epoch, fine-tune with another loss: one INFO line, no warning; the frozen epoch leaves the
    network bit-identical also when resumed mid-freeze; the values are in config.yaml and the run identity, and a
    resume with another value is refused naming the flag."""
    fast = [*SMALL, "--max_frames", "30", "--batch_size", "8", "--max_seg_per_spk", "2", "--eval_frames", "0",
            "--nDataLoaderThread", "0", "--tensorboard", "false", *corpus_flags(tiny_corpus)]
    pretrained = tmp_path / "pre"
    assert trainSpeakerNet.main([*fast, "--trainfunc", "mp_balance", "--max_epoch", "1",
                                 "--save_path", str(pretrained)]) == 0
    initial = str(pretrained / "model" / "model000000001.model")
    capsys.readouterr()
    run = tmp_path / "fine"
    tune = [*fast, "--trainfunc", "aamsoftmax", "--initial_model", initial, "--freeze_epochs", "2",
            "--network_lr_scale", "0.5", "--save_path", str(run)]
    assert trainSpeakerNet.main([*tune, "--max_epoch", "1"]) == 0
    out, err = capsys.readouterr()
    [line] = [line for line in out.splitlines() if line.startswith("Initial model")]
    assert line.endswith(f"loss head: starts fresh because {initial}'s head is mp_balance for 40 classes, this run "
                         f"trains aamsoftmax for 40 classes")
    assert "WARNING" not in err
    model = run / "model"
    start = read_checkpoint(initial)["model_state_dict"]

    def network_unchanged(epoch: int) -> bool:
        state = read_checkpoint(str(model / f"model{epoch:09d}.model"))["model_state_dict"]
        return all(torch.equal(state[key], value) for key, value in start.items() if key.startswith("__S__."))

    assert network_unchanged(1)
    first = read_checkpoint(str(model / "model000000001.model"))["run"]
    assert first["initial_model"] == {"path": initial, "sha256": file_digest(initial)}
    assert (first["options"]["freeze_epochs"], first["options"]["network_lr_scale"]) == (2, 0.5)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["freeze_epochs"], config["network_lr_scale"]) == (2, 0.5)
    # resumed mid-freeze (a longer run in the same folder): epoch 2 is still frozen, epoch 3 trains everything
    capsys.readouterr()
    assert trainSpeakerNet.main([*tune, "--max_epoch", "3"]) == 0
    assert network_unchanged(2) and not network_unchanged(3)
    said = capsys.readouterr().out
    assert "epoch 2: the network is frozen (BatchNorm statistics included); the loss head trains alone" in said
    assert "epoch 3: the network's LR is 0.025000 (0.5 x the loss head's)" in said
    assert read_checkpoint(str(model / "model000000003.model"))["run"]["initial_model"]["sha256"] == \
        file_digest(initial)
    capsys.readouterr()
    changed = [*tune[:tune.index("--freeze_epochs")], "--freeze_epochs", "1",
               *tune[tune.index("--freeze_epochs") + 2:], "--max_epoch", "4"]
    assert trainSpeakerNet.main(changed) == 2
    assert "--freeze_epochs: saved 2, given 1" in capsys.readouterr().err


def frozen_ranks_worker(rank, port, out):
    """One of two ranks training a frozen epoch, then an unfrozen one, through DDP (gloo on the CPU)."""
    import os

    import torch.distributed as dist

    from spknet import distributed
    torch.set_num_threads(1)
    os.environ.update(distributed.spawn_environment(port, rank, 2))
    distributed.init_process_group(torch.device("cpu"))
    try:
        torch.manual_seed(0)
        net = SpeakerNet.build(model="ResNetSE34L", trainfunc="aamsoftmax", nOut=16, nSpeakers=4)
        trainer = ModelTrainer(net, torch.device("cpu"), TrainingSpec(optimizer="sgd", scheduler="steplr", lr=0.05,
                                                                      freeze_epochs=1))
        start = snapshot(net)
        waves, labels, sizes = batch(rank)
        trainer.train_network([(waves, labels, sizes)], epoch=1, show_progress=False)
        frozen = snapshot(net)
        trainer.train_network([(waves, labels, sizes)], epoch=2, show_progress=False)
        params = torch.cat([p.detach().flatten() for p in net.parameters()])
        gathered = [torch.zeros_like(params) for _ in range(2)]
        dist.all_gather(gathered, params)
        if rank == 0:
            torch.save({"start": start, "frozen": frozen, "end": snapshot(net),
                        "same": torch.equal(gathered[0], gathered[1])}, out)
    finally:
        distributed.shutdown()


@pytest.mark.slow
def test_a_frozen_network_trains_under_distributed_data_parallel(tmp_path):
    import torch.multiprocessing as mp

    from tests.helpers import free_port
    out = tmp_path / "rank0.pt"
    mp.spawn(frozen_ranks_worker, args=(free_port(), str(out)), nprocs=2)
    result = torch.load(out, weights_only=True)
    start, frozen, end = result["start"], result["frozen"], result["end"]
    network = [key for key in start if key.startswith("__S__.")]
    assert all(torch.equal(start[key], frozen[key]) for key in network)
    assert not torch.equal(start["__L__.weight"], frozen["__L__.weight"])
    assert not torch.equal(frozen["__S__.layer1.0.conv1.weight"], end["__S__.layer1.0.conv1.weight"])
    assert result["same"]
