"""The project's own error type: everything a user can get wrong ends in one of these, never in a traceback."""

import sys


class SpeakerNetError(Exception):
    """A user-facing error: the message names the file, line or key and what was expected."""


def check_choice(name: str, value, choices):
    """``value`` when it is one of ``choices``, else an error naming them all."""
    if value not in choices:
        raise SpeakerNetError(f"unknown {name} {value!r}: choose {' or '.join(map(str, choices))}")
    return value


def worker_message(error: SpeakerNetError) -> str:
    """The message of ``error`` for the user: torch re-raises an error of a DataLoader worker in the main process
    as the same type with the worker's whole traceback as its message; that gives back the original's."""
    text = str(error)
    if not text.startswith(f"Caught {type(error).__name__} in DataLoader worker"):
        return text
    name = f"{type(error).__module__}.{type(error).__qualname__}: "
    at = text.rfind(name)
    return text[at + len(name):].strip() if at >= 0 else text


def located(path, line_number: int | None, message: str) -> SpeakerNetError:
    """An error pointing at ``path:line`` (or just ``path``)."""
    where = f"{path}:{line_number}" if line_number is not None else f"{path}"
    return SpeakerNetError(f"{where}: {message}")


def exit_status(command, *args) -> int:
    """A command line's exit status: 0 when ``command(*args)`` returns, 2 with one ``error:`` line on stderr when
    it raises a :class:`SpeakerNetError` (what the user can fix; anything else keeps its traceback)."""
    try:
        command(*args)
    except SpeakerNetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
