"""One training run per folder: an exclusive OS lock on ``FOLDER/.lock``, held for the whole run.

``fcntl.flock`` locks belong to the open file, so the kernel drops them when the process ends, however it ends
(a SIGKILLed run leaves no stale lock). The file keeps the holder's PID for the message a second run gets.
"""

import fcntl
import os

from spknet.errors import SpeakerNetError

LOCK_FILE = ".lock"


class RunLock:
    """``with RunLock(folder):`` holds the folder's lock, or fails at once naming the holder."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, LOCK_FILE)
        self.handle = None

    def __enter__(self):
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise SpeakerNetError(f"{os.path.dirname(self.path)}: another training run (PID {holder}) is using "
                                  f"this folder; wait for it to end, or give this run a folder of its own") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
        self.handle = None
        return False
