"""Argument types shared by the command lines: checked numbers whose YAML form is known (``value_type``)."""

import argparse


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
