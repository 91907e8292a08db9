"""The command line: the original README's commands parse verbatim, YAML precedence and errors, names."""

import re
import shlex

import pytest
import torch
import yaml

from spknet import plugins
from spknet.errors import SpeakerNetError
from tests.helpers import REPO, fixture_file, run_cli
from trainSpeakerNet import build_parser, parse_args, spec_from_argv

ORIGINAL_DEFAULTS = {
    "max_frames": 200, "batch_size": 200, "max_seg_per_spk": 100, "nDataLoaderThread": 5, "test_interval": 1,
    "lr_interval": 10, "max_epoch": 500, "trainfunc": "", "optimizer": "adam", "lr": 0.001, "lr_decay": 0.95,
    "hard_prob": 0.5, "hard_rank": 10, "initial_model": "", "save_path": "./data/exp1",
    "train_list": "", "test_list": "", "train_path": "voxceleb2", "test_path": "voxceleb1", "eval": False,
    "model": "", "margin": None, "scale": None, "scheduler": "plateau",
    "log_input": True, "augment": False, "distributed": False, "mixedprec": None,
}


def readme_commands():
    text = fixture_file("seed-README.md").read_text()
    commands = [line.strip() for line in text.splitlines() if line.strip().startswith("python ./trainSpeakerNet.py")]
    assert len(commands) == 5
    return [shlex.split(command)[2:] for command in commands]


def test_defaults_are_the_originals():
    args = parse_args([])
    for key, value in ORIGINAL_DEFAULTS.items():
        assert getattr(args, key) == value, key
    # --nSpeakers: the training list's speaker count when not given (5994 for VoxCeleb2, the original's default)
    assert args.eval_frames == args.max_frames and args.nSpeakers is None
    # the model options left unset are the original network's own: ResNetSE34L, SAP, 512, 40 mels, Hann
    model = spec_from_argv([]).model.resolved()
    assert (model.model, model.encoder_type, model.nOut, model.n_mels, model.window) == \
        ("ResNetSE34L", "SAP", 512, 40, "hann")


def test_readme_commands_parse_verbatim():
    parsed = [parse_args(argv) for argv in readme_commands()]
    assert [a.trainfunc for a in parsed] == ["mp_balance", "mmp_balance2", "mp", "mmp", "mmp_balance"]
    for args in parsed:
        assert args.encoder_type == "SAP" and args.model == "ResNetSE34L" and args.optimizer == "sgd"
        assert args.batch_size == 200 and args.lr == 0.2
    assert [a.max_frames for a in parsed] == [350, 350, 200, 200, 400]
    assert [a.eval for a in parsed] == [False] * 4 + [True]
    assert parsed[4].initial_model == "voxceleb_pretrained.model"


def test_encoder_is_an_alias_of_encoder_type():
    """``--encoder`` (the original README's spelling) is an alias of ``--encoder_type`` and nothing else."""
    flags = [option for action in build_parser().flag_actions.values() for option in action.option_strings]
    assert sorted(flag for flag in flags if flag.startswith("--encoder")) == ["--encoder", "--encoder_type"]
    assert parse_args(["--encoder", "ASP"]).encoder_type == "ASP"


@pytest.mark.parametrize("index,config", [(0, "mp_balance"), (1, "mmp_balance2"), (2, "mp"), (3, "mmp"),
                                          (4, "eval_mmp_balance_4s")])
def test_configs_reproduce_readme_commands(index, config):
    """Each config equals its README command, except data paths (the user's) and save_path (distinct per loss)."""
    from_command = vars(parse_args(readme_commands()[index]))
    from_config = vars(parse_args(["--config", str(REPO / "configs" / f"{config}.yaml")]))
    ignored = {"train_list", "test_list", "train_path", "test_path", "save_path", "config", "initial_model", "given"}
    assert {k: v for k, v in from_command.items() if k not in ignored} == \
           {k: v for k, v in from_config.items() if k not in ignored}


def test_precedence_flags_over_yaml_over_defaults(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"lr": 0.5, "batch_size": 7, "log_input": False, "nClasses": 11}))
    args = parse_args(["--config", str(config), "--lr", "0.1"])
    assert args.lr == 0.1 and args.batch_size == 7 and args.log_input is False and args.nSpeakers == 11
    assert args.max_frames == 200


@pytest.mark.parametrize("content,message", [
    ("learning_rate: 0.1\n", "unknown key 'learning_rate'"),
    ("batch_size: many\n", "key 'batch_size' expects int"),
    ("batch_size: 2.5\n", "key 'batch_size' expects int"),
    ("eval: 1\n", "key 'eval' expects true or false"),
    ("encoder_type: TAP\n", "key 'encoder_type' must be one of"),
    ("- a\n- b\n", "expected a mapping"),
    ("lr: [0.1\n", "not a valid YAML file"),
])
def test_bad_config_is_a_clear_error(tmp_path, content, message):
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    with pytest.raises(SpeakerNetError, match=re.escape(message)) as raised:
        parse_args(["--config", str(config)])
    assert str(config) in str(raised.value)


def test_unknown_names_list_the_choices():
    for package, name in [("models", "ResNet99"), ("loss", "nope"), ("optimizer", "lbfgs"), ("scheduler", "x")]:
        with pytest.raises(SpeakerNetError) as raised:
            plugins.load(package, name)
        assert name in str(raised.value) and ", ".join(plugins.choices(package)) in str(raised.value)
    assert {"mp", "mmp", "mp_balance", "mmp_balance", "mmp_balance2"} <= set(plugins.choices("loss"))
    assert not any(name.startswith("_") for name in plugins.choices("loss"))


@pytest.mark.slow
def test_unknown_trainfunc_exits_non_zero_with_choices(tmp_path):
    result = run_cli("--model", "ResNetSE34L", "--trainfunc", "mpp", "--save_path", tmp_path / "run")
    assert result.returncode != 0
    assert "unknown --trainfunc 'mpp'" in result.stderr and "mp_balance" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_bounded_flags_are_checked_when_parsed(capsys):
    for flag, value in [("--eval_batch_size", "0"), ("--cohort_size", "1"), ("--cohort_utterances", "0")]:
        with pytest.raises(SystemExit) as raised:
            parse_args([flag, value])
        assert raised.value.code == 2 and f"argument {flag}: must be at least" in capsys.readouterr().err


def test_bounded_flags_in_yaml_name_the_key(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("cohort_size: 1\n")
    with pytest.raises(SpeakerNetError, match=r"key 'cohort_size' must be at least 2, got 1"):
        parse_args(["--config", str(config)])


def test_distributed_without_torchrun_or_a_gpu_says_how_to_launch(monkeypatch, capsys):
    import trainSpeakerNet
    from spknet import distributed
    for name in distributed.ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert trainSpeakerNet.main(["--distributed", "--model", "ResNetSE34L", "--trainfunc", "mp_balance"]) == 2
    error = capsys.readouterr().err
    assert "--distributed without torchrun: no GPU" in error and "torchrun --nproc_per_node N" in error
