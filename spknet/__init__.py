"""SpeakerNet's library: data, training, evaluation, checkpoints and inference behind the top-level commands.

The plugin folders (``models/``, ``loss/``, ``optimizer/``, ``scheduler/``) are the subpackages
``spknet.models``, ``spknet.loss``, ... An installed copy holds them inside this package; in a checkout they stay
beside it, where the original has them, and are registered under this package's name when it is imported, so a
plugin file added to the checkout's folder is found by name.
"""

import importlib.util
import os
import sys

from spknet.constants import SAMPLE_RATE

PLUGIN_PACKAGES = ("models", "loss", "optimizer", "scheduler")

__all__ = ["SAMPLE_RATE", "PLUGIN_PACKAGES", "load_embedder"]


def _register_checkout_plugins() -> None:
    """``spknet.<kind>`` from the checkout's ``<kind>/`` folder when this package has no such subpackage."""
    here = os.path.dirname(os.path.abspath(__file__))
    for kind in PLUGIN_PACKAGES:
        name = f"{__name__}.{kind}"
        if name in sys.modules or os.path.isdir(os.path.join(here, kind)):
            continue
        folder = os.path.join(os.path.dirname(here), kind)
        init = os.path.join(folder, "__init__.py")
        if not os.path.isfile(init):
            continue
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[folder])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


_register_checkout_plugins()


def __getattr__(name: str):
    """``spknet.load_embedder`` without importing torch and the networks at ``import spknet``."""
    if name == "load_embedder":
        from spknet.inference import load_embedder
        return load_embedder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
