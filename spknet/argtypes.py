"""Argument types shared by the command lines (checked numbers and switches whose YAML form is known:
``value_type``), and reading a ``--config`` YAML file as flag values."""

import argparse

import yaml

from spknet.errors import SpeakerNetError


def at_least(minimum: int):
    """An argparse type: an integer no smaller than ``minimum``."""
    def parse(text) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    parse.__name__ = "int"          # what argparse's "invalid int value" message names
    parse.value_type = int          # what a YAML value must be
    return parse


def non_negative(text) -> float:
    """An argparse type: a float no smaller than 0."""
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of at least 0, got {value:g}")
    return value


non_negative.__name__ = "float"
non_negative.value_type = float


def true_or_false(value) -> bool:
    """An argparse type for switches that take a value (``--tensorboard false``): true/false, yes/no, on/off,
    1/0; a YAML boolean as it is."""
    if isinstance(value, bool):
        return value
    words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
    answer = words.get(str(value).strip().lower())
    if answer is None:
        raise argparse.ArgumentTypeError(f"expects true or false, got {value!r}")
    return answer


true_or_false.value_type = bool


def _coerce(action: argparse.Action, key: str, value, source: str):
    """A YAML value converted to the flag's type, or a clear error."""
    if action.nargs == "?" and isinstance(value, bool):     # e.g. "mixedprec: true" -> its flag's value
        return action.const if value else None
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):     # switches
        if not isinstance(value, bool):
            raise SpeakerNetError(f"{source}: key '{key}' expects true or false, got {value!r}")
        return value
    if value is None or action.type is None:
        if value is not None and action.choices and value not in action.choices:
            raise SpeakerNetError(f"{source}: key '{key}' must be one of {list(action.choices)}, got {value!r}")
        return value
    expected = getattr(action.type, "value_type", action.type)
    if expected in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float, str))):
        raise SpeakerNetError(f"{source}: key '{key}' expects {expected.__name__}, got {value!r}")
    if expected is int and isinstance(value, float) and not value.is_integer():
        raise SpeakerNetError(f"{source}: key '{key}' expects int, got {value!r}")
    try:
        converted = action.type(int(value) if expected is int and isinstance(value, float) else value)
    except (TypeError, ValueError):
        raise SpeakerNetError(f"{source}: key '{key}' expects {expected.__name__}, got {value!r}") from None
    except argparse.ArgumentTypeError as error:
        raise SpeakerNetError(f"{source}: key '{key}' {error}") from None
    if action.choices and converted not in action.choices:
        raise SpeakerNetError(f"{source}: key '{key}' must be one of {list(action.choices)}, got {value!r}")
    return converted


def read_config(path: str, parser: argparse.ArgumentParser) -> dict:
    """YAML flag values; an unknown key or a wrong type is an error that names it."""
    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle)
    except FileNotFoundError:
        raise SpeakerNetError(f"{path}: config file not found") from None
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as error:
        raise SpeakerNetError(f"{path}: not a valid YAML file ({' '.join(str(error).split())})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise SpeakerNetError(f"{path}: expected a mapping of flag names to values, got {type(values).__name__}")
    actions = {dest: action for dest, action in parser.flag_actions.items() if dest != "config"}
    config, names = {}, key_names(parser)
    for key, value in values.items():
        dest = names.get(key)
        if dest not in actions:
            raise SpeakerNetError(f"{path}: unknown key '{key}' (not a flag of {parser.prog})")
        config[dest] = _coerce(actions[dest], str(key), value, path)
    return config


def key_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """YAML key -> flag destination: every name of every flag without its dashes (``nClasses`` and ``nSpeakers``
    both set ``nSpeakers``), the ``--no-`` forms of switches left out."""
    return {option.lstrip("-"): dest for dest, action in parser.flag_actions.items()
            for option in action.option_strings if not option.startswith("--no-")}
