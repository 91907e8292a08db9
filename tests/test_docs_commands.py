"""Every shell command in the README and in docs/ parses against its script's flags, so the docs cannot drift from
the command lines. Each command's script is run up to its argument parser (the parse itself is real: a flag that
does not exist, a wrong choice or a missing config file fails); shell scripts are checked by ``bash -n``."""

import argparse
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PYTHON = re.compile(r"^(?:\S*/)?python3?$")
OWN_PACKAGES = ("spknet", "benchmarks", "scripts")


class Parsed(Exception):
    """Raised once a script's argument parser has accepted its arguments: the command parses."""


def shell_blocks(path: Path) -> list[str]:
    """The commands of the fenced blocks without a language (or ``bash``/``sh``), continuation lines joined."""
    commands, inside, language, pending = [], False, "", ""
    for line in path.read_text().splitlines():
        fence = re.match(r"^```(\w*)", line)
        if fence:
            inside, language = not inside, fence.group(1)
            continue
        if not inside or language not in ("", "bash", "sh", "shell"):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            if pending.strip():
                commands.append(pending.strip())
            pending = ""
    return commands


def documented_commands() -> list[tuple[str, str]]:
    return [(f"{path.relative_to(REPO)}: {command}", command) for path in DOCS for command in shell_blocks(path)]


def words_of(command: str) -> list[str]:
    """The command's words: environment assignments and comments dropped, the first command of a ``&&`` chain
    split into each (the caller checks each)."""
    words = shlex.split(command, comments=True)
    while words and re.match(r"^[A-Z_]+=", words[0]):
        words.pop(0)
    return words


def script_and_argv(words: list[str]):
    """(how to run it, argv) for ``python SCRIPT ...``, ``python -m MODULE ...``, ``torchrun [opts] SCRIPT ...``,
    ``bash SCRIPT ...``; None for other commands (pip, venv, ...)."""
    if words and words[0] == "torchrun":
        rest = words[1:]
        while rest and rest[0].startswith("--"):
            rest = rest[1:] if "=" in rest[0] else rest[2:]
        return ("path", rest[0], rest[1:]) if rest else None
    if words and words[0] == "bash":
        return ("bash", words[1], words[2:])
    if words and words[0].endswith(".sh"):
        return ("bash", words[0], words[1:])
    if len(words) >= 2 and PYTHON.match(words[0]):
        if words[1] == "-m":      # this project's modules only (not pytest, pip, venv)
            return ("module", words[2], words[3:]) if words[2].startswith(OWN_PACKAGES) else None
        if words[1].endswith(".py"):
            return ("path", words[1], words[2:])
    return None


def parse_only(monkeypatch, kind: str, target: str, argv: list[str]) -> None:
    """Run the script up to its argparse parse; the parse must accept ``argv``."""
    real_parse_args = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        real_parse_args(self, args, namespace)        # SystemExit(2) on a bad flag: the test fails
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    monkeypatch.setattr(sys, "argv", [target, *argv])
    monkeypatch.chdir(REPO)
    try:
        if kind == "module":
            monkeypatch.delitem(sys.modules, target, raising=False)     # run afresh as __main__, as python -m does
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(str(REPO / target.lstrip("./")), run_name="__main__")
    except Parsed:
        return
    raise AssertionError(f"{target} {' '.join(argv)}: its argument parser was never reached")


def quickstart_argv(argv: list[str]) -> list[str]:
    """quickstart.py passes the flags it does not know to trainSpeakerNet.py, after its quickstart config."""
    own = argparse.ArgumentParser(add_help=False)
    for flag in ("--corpus", "--config"):
        own.add_argument(flag)
    own.add_argument("--skip_baseline", action="store_true")
    known, extra = own.parse_known_args(argv)
    return ["--config", known.config or "configs/quickstart.yaml", *extra]


COMMANDS = documented_commands()


def test_the_docs_hold_commands_of_every_script():
    found = [script_and_argv(words_of(part)) for _, command in COMMANDS for part in command.split("&&")]
    scripts = {Path(target).name for _, target, _ in filter(None, found)}
    assert {"trainSpeakerNet.py", "inference.py", "dataprep.py", "quickstart.py"} <= scripts
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize("where,command", COMMANDS, ids=[where[:90] for where, _ in COMMANDS])
def test_documented_command_parses(where, command, monkeypatch):
    for part in command.split("&&"):
        found = script_and_argv(words_of(part))
        if found is None:
            continue
        kind, target, argv = found
        if kind == "bash":
            path = REPO / target
            assert path.is_file(), f"{where}: {target} does not exist"
            subprocess.run(["bash", "-n", str(path)], check=True)
            continue
        if Path(target).name == "quickstart.py":
            kind, target, argv = "path", "trainSpeakerNet.py", quickstart_argv(argv)
        parse_only(monkeypatch, kind, target, argv)
