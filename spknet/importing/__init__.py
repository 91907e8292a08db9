"""Import the published checkpoints of other toolkits as SpeakerNet checkpoints (``python inference.py import``).

One table, :data:`TOOLKITS`, holds what SpeakerNet knows of each toolkit: how its file is read, which of our
networks its keys (and its config, when it has one) select, how its keys map onto ours, what its classifier head is.
Every import then goes the same way (:func:`import_checkpoint`):

1. The file is read with ``torch.load(weights_only=True)`` only. A toolkit whose files pickle more than tensors
   (pyannote's Lightning checkpoints hold a ``Specifications`` dataclass, enums and torch's ``TorchVersion``) names
   those types in its entry; they are rebuilt as inert records (:class:`Record`: the arguments kept, no code run),
   and any other type in the file is refused. A config is read as data (``yaml.safe_load``).
2. The toolkit's reader says which network it is (a :class:`~spknet.specs.ModelSpec`: the model, ``nOut``,
   ``n_mels``, the front end and the input scale the toolkit computes with), maps its keys to the network's, and
   sets its classifier head apart (dropped, and named in a log line).
3. The network is built from that spec and loaded strictly: every key of the network must come from the file with
   its shape, and every key of the file must be used; otherwise one error names the file and the key, and nothing
   is written.
4. The SpeakerNet checkpoint is written atomically: ``{"model_state_dict": {"__S__.*": ...}, "run": {"schema",
   "model": the spec, ...}, "imported": {toolkit, file, sha256, config, dropped keys}}``, which ``--eval
   --initial_model``, ``load_embedder`` and every ``inference.py`` command read as one of our own.

Toolkits: ``wespeaker`` (``avg_model.pt``, a state dict as ``wespeaker/utils/checkpoint.py`` saves it, with its
``config.yaml``: ResNet18-293, CAM++, ReDimNet B0-B6, the ECAPA-TDNNs ``ECAPA_TDNN[_GLOB]_c{512,1024}`` and the
SimAM-ResNets ``SimAM_ResNet34_ASP``, ``SimAM_ResNet100_ASP``),
``pyannote`` (``pytorch_model.bin``: WeSpeaker's ResNets re-packaged as
``pyannote.audio.models.embedding.wespeaker.WeSpeakerResNet{34,152,221,293}``), ``3dspeaker`` (a bare state dict per
model id: CAM++ and ERes2NetV2; ``--config`` is the model id, the network's name or its training config),
``speechbrain`` (``embedding_model.ckpt``, a state dict, with its ``hyperparams.yaml`` read as data: ECAPA-TDNN).
Others add an entry with :func:`register`; each toolkit's entry is a module of this package (``wespeaker``,
``threedspeaker``, ``voxceleb_trainer``, ``speechbrain``) and the shared steps are :mod:`spknet.importing.base`.
"""

from spknet.importing import speechbrain, threedspeaker, voxceleb_trainer, wespeaker  # noqa: F401 (they register)
from spknet.importing.base import TOOLKITS, Imported, ImportReport, Toolkit, import_checkpoint, register, toolkit

__all__ = ["TOOLKITS", "ImportReport", "Imported", "Toolkit", "import_checkpoint", "register", "toolkit"]
