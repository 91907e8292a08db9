"""Find models, losses, optimizers and schedulers by name: ``PACKAGE/NAME.py`` exporting one attribute."""

import importlib
import inspect
import os

from spknet.errors import SpeakerNetError

KINDS = {"models": "model", "loss": "loss", "optimizer": "optimizer", "scheduler": "scheduler"}
EXPORTS = {"models": "MainModel", "loss": "LossFunction", "optimizer": "Optimizer", "scheduler": "Scheduler"}


def plugin_folder(package: str) -> str:
    """Where ``package``'s plugin files are: the checkout's ``models/``, ... or the installed copy's."""
    return importlib.import_module(f"spknet.{package}").__path__[0]


def choices(package: str) -> list[str]:
    """Plugin names in ``package``: its modules, except private helpers (leading underscore)."""
    return sorted(name[:-3] for name in os.listdir(plugin_folder(package))
                  if name.endswith(".py") and not name.startswith("_"))


def load(package: str, name: str):
    """The exported attribute of ``package/name.py``; an unknown name lists the choices."""
    available = choices(package)
    if name not in available:
        raise SpeakerNetError(f"unknown {KINDS[package]} {name!r}; choices: {', '.join(available)}")
    return _export(package, name)


def _export(package: str, name: str):
    return getattr(importlib.import_module(f"spknet.{package}.{name}"), EXPORTS[package])


def model_defaults(name: str) -> dict:
    """The keyword defaults of ``models/name.py``'s ``MainModel``: the network's own ``nOut``, ``n_mels``,
    ``encoder_type``, ``window``, ``channels``, ... (what a flag left unset, None, means for it)."""
    if name not in choices("models"):
        load("models", name)                # the error that lists the choices
    signature = inspect.signature(_export("models", name))     # reads the signature: builds nothing
    return {key: parameter.default for key, parameter in signature.parameters.items()
            if parameter.default is not inspect.Parameter.empty}


def with_model_defaults(name: str, options: dict) -> dict:
    """``options`` with every option of the network that is absent or None set to the network's own default
    (:func:`model_defaults`); an option given to a network without it (``channels`` to ResNetSE34L) is an error,
    not silently ignored."""
    defaults = model_defaults(name)
    foreign = [key for key, value in options.items() if value is not None and key not in defaults]
    if foreign:
        raise SpeakerNetError(f"model {name} has no option {', '.join('--' + key for key in foreign)}; models "
                              f"with it: {', '.join(n for n in choices('models') if foreign[0] in model_defaults(n))}")
    return {**options, **{key: value for key, value in defaults.items() if options.get(key) is None}}


def takes_option(package: str, name: str, option: str) -> bool:
    """Whether the plugin's class names ``option`` among its keyword parameters (``margin`` for ``loss/aamsoftmax``):
    the options a plugin only swallows through ``**kwargs`` are ones it does not use."""
    return option in inspect.signature(_export(package, name)).parameters


def is_per_iteration(scheduler) -> bool:
    """A schedule (plugin class or instance) that declares ``per_iteration``: stepped after every batch, not per
    epoch."""
    return bool(getattr(scheduler, "per_iteration", False))
