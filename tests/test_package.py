"""The installable package: a wheel of the repository holds the library with the plugin folders inside it (and none
of the repository's other top-level folders); an installed copy imports and finds its own plugins from any
directory; in a checkout, a plugin file added to a plugin folder is found by name."""

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from spknet import PLUGIN_PACKAGES
from tests.helpers import REPO

# What a copy of the checkout leaves out: version control, environments, caches, build outputs, run folders.
NOT_COPIED = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", "build", "dist"}
NOT_COPIED_AT_THE_TOP = {"data", "exps"}
MASKED_PROXY = {"mp", "mmp", "mp_balance", "mmp_balance", "mmp_balance2"}


def copy_checkout(target: Path) -> Path:
    """The checkout's files copied to ``target`` (a build or an added plugin there never touches the checkout)."""
    def ignore(folder, names):
        top = Path(folder) == REPO
        return {name for name in names if name in NOT_COPIED or name.endswith(".egg-info")
                or (top and name in NOT_COPIED_AT_THE_TOP)}

    shutil.copytree(REPO, target, ignore=ignore)
    return target


def python(code: str, cwd: Path, pythonpath: str | None) -> subprocess.CompletedProcess:
    """``code`` run by this interpreter in ``cwd`` with PYTHONPATH set to ``pythonpath`` (or unset)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def pip(*args: str, cwd: Path) -> None:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    result = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def local_backend_builds_wheels() -> bool:
    """Whether this interpreter's setuptools can build a wheel without a download: setuptools 70.1 and later
    carry ``bdist_wheel``, older ones need the ``wheel`` package (a new venv of Python 3.11 has setuptools 65
    and no ``wheel``)."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    from importlib.metadata import version
    major, minor = (int(part) for part in version("setuptools").split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the checkout: with this interpreter's setuptools when it can (no download),
    else in pip's isolated build environment (setuptools from the package index)."""
    root = tmp_path_factory.mktemp("wheel")
    source = copy_checkout(root / "source")
    isolation = ["--no-build-isolation", "--no-index"] if local_backend_builds_wheels() else []
    pip("wheel", "--no-deps", *isolation, "-w", str(root / "dist"), ".", cwd=source)
    (built,) = (root / "dist").glob("*.whl")
    return built


@pytest.fixture(scope="module")
def site(wheel, tmp_path_factory) -> Path:
    """The wheel installed alone into a folder (torch and the other dependencies come from this environment)."""
    target = tmp_path_factory.mktemp("installed") / "site"
    pip("install", "--no-deps", "--no-index", "--no-compile", "--target", str(target), str(wheel), cwd=wheel.parent)
    return target


@pytest.mark.slow
def test_the_wheel_holds_the_library_and_the_plugins_inside_it(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for inside in ("spknet/__init__.py", "spknet/models/ResNetSE34L.py", "spknet/loss/mp_balance.py",
                   "spknet/optimizer/sgd.py", "spknet/scheduler/steplr.py", "spknet/data/audio.py",
                   "spknet/training/trainer.py", "spknet/evaluation/__init__.py"):
        assert inside in names
    expected = {f"spknet/{path.relative_to(REPO / 'spknet').as_posix()}" for path in (REPO / "spknet").rglob("*.py")}
    for kind in PLUGIN_PACKAGES:
        expected |= {f"spknet/{kind}/{path.name}" for path in (REPO / kind).glob("*.py")}
    assert not expected - names, f"library files missing from the wheel: {sorted(expected - names)}"
    tops = {name.split("/")[0] for name in names}
    assert not tops & {*PLUGIN_PACKAGES, "core", "tests", "benchmarks", "scripts", "configs", "docs"}
    assert not {name for name in names if "/" not in name}, "top-level modules (scripts) in the wheel"
    assert {top for top in tops if not top.endswith(".dist-info")} == {"spknet"}


@pytest.mark.slow
def test_the_installed_copy_imports_and_finds_its_own_plugins(site, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = python("import spknet, spknet.plugins as p\n"
                    "from spknet import load_embedder\n"
                    "assert callable(load_embedder)\n"
                    "print(spknet.__file__)\n"
                    "print(p.plugin_folder('models'))\n"
                    "print(p.plugin_folder('loss'))\n"
                    "print(','.join(p.choices('loss')))\n"
                    "print(p.load('models', 'ResNetSE34L').__module__, p.load('loss', 'mp_balance').__module__)\n",
                    cwd=elsewhere, pythonpath=str(site))
    assert result.returncode == 0, result.stderr[-3000:]
    package, models, loss, losses, loaded = result.stdout.splitlines()[-5:]
    for path in (package, models, loss):
        assert Path(path).resolve().is_relative_to(site.resolve()), f"{path} is not the installed copy's"
    assert MASKED_PROXY <= set(losses.split(","))
    assert loaded == "spknet.models.ResNetSE34L spknet.loss.mp_balance"


@pytest.mark.slow
def test_a_plugin_added_to_the_checkouts_folder_is_found_by_name(tmp_path):
    checkout = copy_checkout(tmp_path / "checkout")
    (checkout / "loss" / "zz_test_loss.py").write_text(
        '"""A loss added by the test."""\n\nfrom spknet.loss.softmax import LossFunction  # noqa: F401\n')
    result = python("import spknet.plugins as p\n"
                    "print(p.plugin_folder('loss'))\n"
                    "print(','.join(p.choices('loss')))\n"
                    "print(p.load('loss', 'zz_test_loss').__name__)\n",
                    cwd=checkout, pythonpath=None)
    assert result.returncode == 0, result.stderr[-3000:]
    folder, names, loaded = result.stdout.splitlines()[-3:]
    assert Path(folder).resolve() == (checkout / "loss").resolve()
    assert "zz_test_loss" in names.split(",") and MASKED_PROXY <= set(names.split(","))
    assert loaded == "LossFunction"
    assert not (REPO / "loss" / "zz_test_loss.py").exists()
