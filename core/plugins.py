"""Find models, losses, optimizers and schedulers by name: ``PACKAGE/NAME.py`` exporting one attribute."""

import importlib
import os

from core.errors import SpeakerNetError

KINDS = {"models": "model", "loss": "loss", "optimizer": "optimizer", "scheduler": "scheduler"}
EXPORTS = {"models": "MainModel", "loss": "LossFunction", "optimizer": "Optimizer", "scheduler": "Scheduler"}
_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository root


def choices(package: str) -> list[str]:
    """Plugin names in ``package``: its modules, except private helpers (leading underscore)."""
    folder = os.path.join(_HERE, package)
    return sorted(name[:-3] for name in os.listdir(folder) if name.endswith(".py") and not name.startswith("_"))


def load(package: str, name: str):
    """The exported attribute of ``package/name.py``; an unknown name lists the choices."""
    available = choices(package)
    if name not in available:
        raise SpeakerNetError(f"unknown {KINDS[package]} {name!r}; choices: {', '.join(available)}")
    module = importlib.import_module(f"{package}.{name}")
    return getattr(module, EXPORTS[package])
