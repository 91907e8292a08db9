"""The original's data module, by its name: everything here lives in :mod:`spknet.data`."""

from spknet.data import *  # noqa: F401,F403
from spknet.data import __all__  # noqa: F401
from spknet.data.audio import load_wav as loadWAV  # noqa: F401  (the original's spelling)
