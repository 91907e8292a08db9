"""The original's model module, by its name: the model lives in :mod:`spknet.model`, the embedder in
:mod:`spknet.inference`."""

from spknet.inference import load_embedder  # noqa: F401
from spknet.model import SpeakerNet  # noqa: F401
