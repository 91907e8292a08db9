"""The command line: the original README's commands parse verbatim, YAML precedence and errors, names."""

import json
import re
import shlex
from dataclasses import fields, replace

import pytest
import torch
import yaml

import trainSpeakerNet
from spknet import cli, plugins
from spknet.errors import SpeakerNetError
from spknet.specs import DataSpec, EvalSpec, ModelSpec, RunSpec, TrainingSpec, losses_with_margin
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
    ("encoder_type: GAP\n", "key 'encoder_type' must be one of"),
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
    from spknet import distributed
    for name in distributed.ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert trainSpeakerNet.main(["--distributed", "--model", "ResNetSE34L", "--trainfunc", "mp_balance"]) == 2
    error = capsys.readouterr().err
    assert "--distributed without torchrun: no GPU" in error and "torchrun --nproc_per_node N" in error


# ----------------------------------------------------------------------------------------------------------------
# Defaults written once (in the specs), and the checks of flag combinations (in the specs' own checks)
# ----------------------------------------------------------------------------------------------------------------

def test_every_spec_field_has_a_flag_whose_default_is_the_field_s():
    """A flag that sets a spec field takes the field's default; only the flags whose unset value means something
    else (cli.OWN_DEFAULTS) differ, and the flags of no spec field (--config, --eval, ...) have their own."""
    actions = build_parser().flag_actions
    for spec_class in cli.SPECS:
        for item in fields(spec_class):
            dest = cli.spec_flags(spec_class)[item.name]
            assert dest in actions, f"{spec_class.__name__}.{item.name} has no flag"
            if dest in cli.OWN_DEFAULTS:
                assert actions[dest].default == cli.OWN_DEFAULTS[dest] != item.default, dest
            else:
                assert actions[dest].default == item.default, f"--{dest} default differs from " \
                                                              f"{spec_class.__name__}.{item.name}'s"
    own = set(actions) - {dest for spec_class in cli.SPECS for dest in cli.spec_flags(spec_class).values()}
    assert own == {"config", "preset", "lr_interval", "eval", "distributed", "port"}


def test_the_spec_of_no_flags_is_the_specs_defaults():
    spec = spec_from_argv([])
    assert spec.data == DataSpec() and spec.training == TrainingSpec()
    assert spec.evaluation == EvalSpec()        # --eval_frames unset: --max_frames, 200, EvalSpec's default too


@pytest.mark.parametrize("argv,message", [
    ([], "--trainfunc is required; choices: "),
    (["--trainfunc", "mpp"], "unknown --trainfunc 'mpp'; choices: "),
    (["--trainfunc", "softmax"], "--model is required; choices: "),
    (["--trainfunc", "softmax", "--model", "ResNetSE34L", "--optimizer", "lbfgs"], "unknown --optimizer 'lbfgs'"),
    (["--trainfunc", "softmax", "--model", "ResNetSE34L", "--scheduler", "x"], "unknown --scheduler 'x'"),
    (["--trainfunc", "softmax", "--model", "ResNetSE34L"],
     "--train_list (or --train_data, a Kaldi data directory, or --train_shards) is required for training"),
    (["--trainfunc", "softmax", "--model", "ResNetSE34L", "--train_list", "a", "--train_data", "b"],
     "--train_list and --train_data: give one of them"),
    (["--trainfunc", "softmax", "--model", "ResNetSE34L", "--train_list", "a"], "--test_list is required for training"),
    (["--trainfunc", "softmax", "--model", "ResNetSE34L", "--train_list", "a", "--test_list", "b", "--window", "hann",
      "--channels", "64"], "channels"),
    (["--trainfunc", "softmax", "--model", "ResNetSE34L", "--train_list", "a", "--test_list", "b", "--device", "cpu",
      "--eval_precision", "fp16"], "--eval_precision fp16 needs a GPU; on the CPU use bf16"),
    (["--eval", "--device", "cpu", "--eval_precision", "fp16"], "--eval_precision fp16 needs a GPU"),
])
def test_flag_combinations_are_refused_before_any_file_is_read(argv, message, capsys, tmp_path):
    """The same errors as when they were checked in trainSpeakerNet.py (the schedule's: test_schedules.py), now
    from RunSpec.check and its parts; nothing is read or written (the lists named do not exist)."""
    assert trainSpeakerNet.main([*argv, "--save_path", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and "Traceback" not in error
    assert not (tmp_path / "run").exists()


def test_run_spec_check_is_the_library_s_too():
    """RunSpec.check holds the checks for a program that builds the specs itself; it returns the spec."""
    spec = RunSpec(ModelSpec(trainfunc="aamsoftmax"), DataSpec(train_list="a"),
                   TrainingSpec(scheduler="warmup_cosine", warmup_epochs=3, max_epoch=3), EvalSpec(test_list="b"))
    with pytest.raises(SpeakerNetError, match="--warmup_epochs 3 must be shorter than --max_epoch 3"):
        spec.check()
    fine = replace(spec, training=replace(spec.training, max_epoch=4, margin=0.2))
    warned = []
    assert fine.check(warned.append) is fine and warned == []
    softmax = replace(fine, model=ModelSpec(trainfunc="softmax"))
    assert softmax.check(warned.append) is softmax
    assert warned == ["--margin 0.2: --trainfunc softmax has no such option, ignored (the losses with a margin: "
                      + ", ".join(losses_with_margin()) + ")"]


def test_the_warm_up_default_final_lr_is_the_schedule_s():
    """--final_lr unset: the schedule's own default ratio, read by the check from the plugin (public there)."""
    schedule = plugins.load("scheduler", "warmup_exp")
    assert schedule.default_final_ratio == 1e-3
    TrainingSpec(scheduler="warmup_exp", lr=0.1, max_epoch=2).check("softmax")     # 1e-4: above 0, below lr


def test_yaml_keys_are_the_flags_names_with_their_aliases(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("nClasses: 7\nencoder: ASP\nnDataLoaderThread: 1\n")
    assert (parse_args(["--config", str(config)]).nSpeakers, parse_args(["--config", str(config)]).encoder_type) \
        == (7, "ASP")
    config.write_text("no-log_input: true\n")
    with pytest.raises(SpeakerNetError, match="unknown key 'no-log_input'"):
        parse_args(["--config", str(config)])


def test_the_library_imports_no_script():
    """spknet/ is a library: no module of it imports a top-level script (trainSpeakerNet, inference, ...)."""
    scripts = {path.stem for path in REPO.glob("*.py")}
    for path in (REPO / "spknet").rglob("*.py"):
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1:
                assert words[1].split(".")[0] not in scripts, f"{path.relative_to(REPO)}: {line.strip()}"


def test_eval_writes_its_numbers_as_data(tiny_corpus, random_checkpoint, tmp_path, capsys, one_thread):
    """--eval's result/metrics.json: what was evaluated and, per list, the numbers it prints (unrounded)."""
    lines = open(tiny_corpus["test_list"]).read().splitlines()
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text("\n".join(lines[:20]) + "\n")
    second.write_text("\n".join(lines[20:30]) + "\n")
    code = trainSpeakerNet.main(["--model", "ResNetSE34L", "--trainfunc", "mp_balance", "--nOut", "16",
                                 "--max_frames", "20", "--eval", "--initial_model", str(random_checkpoint),
                                 "--test_list", f"{first},{second}", "--test_path", tiny_corpus["test_path"],
                                 "--save_path", str(tmp_path / "run"), "--nDataLoaderThread", "0"])
    printed = [float(value) for value in re.findall(r"^EER (\S+)$", capsys.readouterr().out, re.M)]
    assert code == 0 and len(printed) == 2
    metrics = json.loads((tmp_path / "run" / "result" / "metrics.json").read_text())
    assert (metrics["model"], metrics["eval_frames"], metrics["scoring"], metrics["calibration"]) == \
        (str(random_checkpoint), 20, "crops", None)
    assert [(entry["path"], entry["name"], entry["trials"]) for entry in metrics["lists"]] == \
        [(str(first), "first", 20), (str(second), "second", 10)]
    assert [round(entry["eer"], 4) for entry in metrics["lists"]] == printed
    for entry in metrics["lists"]:
        assert set(entry["min_dcf"]) == {"0.05", "0.01"} and entry["cllr"] is None and entry["act_dcf"] is None
        assert entry["min_cllr"] > 0
