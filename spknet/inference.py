"""A trained model outside the trainer: the model configuration a checkpoint carries (or its keys tell), and an
embedder for any audio, scored as ``--eval`` scores.

SpeakerNet's own checkpoints carry their run's options (``checkpoint["run"]["options"]``); for the original's
and voxceleb_trainer-layout state dicts the keys and shapes tell the rest: the model (the original's ResNetSE34L
or voxceleb_trainer's ResNetSE34V2, then with voxceleb_trainer's float input and wrap padding), ``nOut`` from the
last layer, SAP or ASP from its input size, ``n_mels`` and the window from the front end's buffers. What they
cannot tell is an error naming the option to give.
"""

import os

import numpy as np
import soundfile as sf
import torch
import torchaudio

from spknet import SAMPLE_RATE
from spknet.calibration import Calibration, Verification, default_path, scoring_options, weights_sha256
from spknet.checkpoints import load_network
from spknet.data import INT16_SCALE, NUM_EVAL, AudioPipeline, eval_crops, max_audio_samples
from spknet.errors import SpeakerNetError
from spknet.evaluation import TrialScorer, default_files_per_batch
from spknet.progress import progress_bar

MIN_SAMPLES = 400           # one 25-ms analysis window: the front end needs more than half of its FFT


class Embedder:
    """Embeddings of audio from a trained network, and their scores as ``--eval`` computes them.

    ``eval_frames`` 0 embeds whole files; N takes the original's 10 crops of N frames. ``scoring``: ``crops`` (the
    original's crop distances) or ``cosine``. ``calibration`` (checked against this network and scoring with
    :meth:`use_calibration`) turns scores into LLRs for :meth:`verify`.
    """

    def __init__(self, network: torch.nn.Module, test_normalize: bool, pipeline: AudioPipeline,
                 device: torch.device, eval_frames: int = 0, scoring: str = "crops", source: str = "",
                 config: dict | None = None):
        self.network = network.to(device).eval()
        self.test_normalize, self.pipeline, self.device = test_normalize, pipeline, device
        self.eval_frames, self.scoring, self.source = eval_frames, scoring, source
        self.calibration: Calibration | None = None
        self.config = dict(config or {})        # the model options it was built with (export records them)

    def scoring_options(self) -> dict:
        """The options that shape this embedder's scores, as a calibration records them (no score
        normalisation; short files padded, as :meth:`embed` does)."""
        return scoring_options(self.eval_frames, self.scoring, "none", self.test_normalize, self.pipeline.scale,
                               self.pipeline.pad)

    def weights_sha256(self) -> str:
        return weights_sha256(self.network)

    def use_calibration(self, calibration: Calibration | None) -> None:
        """Score with ``calibration`` from now on, once it is checked to be this network's and this scoring's."""
        if calibration is not None:
            calibration.check(self.weights_sha256(), self.scoring_options())
        self.calibration = calibration

    def waveform(self, audio, sample_rate: int = SAMPLE_RATE, name: str = "audio") -> np.ndarray:
        """Mono float32 samples at 16 kHz in [-1, 1] from a path or an array/tensor (float in [-1, 1] or int16;
        ``(samples,)``, ``(samples, channels)`` as soundfile returns or ``(channels, samples)`` as torchaudio)."""
        if isinstance(audio, (str, os.PathLike)):
            name = str(audio)
            try:
                audio, sample_rate = sf.read(name, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError, OSError) as error:
                raise SpeakerNetError(f"{name}: cannot read audio ({error})") from None
        samples = torch.as_tensor(np.asarray(audio) if not isinstance(audio, torch.Tensor) else audio)
        if samples.dtype == torch.int16:
            samples = samples.float() / INT16_SCALE
        samples = samples.float()
        if samples.numel() == 0:
            raise SpeakerNetError(f"{name}: no samples, shorter than the network's {MIN_SAMPLES}-sample "
                                  f"analysis window")
        if samples.dim() == 2:                       # the shorter axis holds the channels
            samples = samples.mean(dim=1 if samples.shape[1] < samples.shape[0] else 0)
        if samples.dim() != 1:
            raise SpeakerNetError(f"{name}: expected mono or multi-channel samples, got shape {tuple(samples.shape)}")
        if not torch.isfinite(samples).all():
            raise SpeakerNetError(f"{name}: non-finite (NaN/inf) samples")
        if sample_rate != SAMPLE_RATE:
            samples = torchaudio.functional.resample(samples, sample_rate, SAMPLE_RATE)
        if samples.shape[0] < MIN_SAMPLES:
            raise SpeakerNetError(f"{name}: {samples.shape[0]} samples at 16 kHz, shorter than the network's "
                                  f"{MIN_SAMPLES}-sample analysis window")
        if not samples.abs().max() > 0:
            raise SpeakerNetError(f"{name}: all samples are zero (silence has no speaker)")
        return samples.numpy()

    @torch.no_grad()
    def embed(self, audio, sample_rate: int = SAMPLE_RATE):
        """``(crops, dim)`` embeddings of one audio (see :meth:`waveform`), or a list of them for a list."""
        if isinstance(audio, (list, tuple)):
            return [self.embed(item, sample_rate) for item in audio]
        return self._forward(torch.from_numpy(self.crops(audio, sample_rate))[None])[0]

    def crops(self, audio, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """The network's input for one audio: ``(crops, samples)`` float32 in the model's input scale."""
        samples = self.waveform(audio, sample_rate)
        if self.pipeline.scale == "int16":
            samples = samples * INT16_SCALE
        return np.ascontiguousarray(eval_crops(samples, self.eval_frames, pipeline=self.pipeline))

    def _forward(self, crops: torch.Tensor) -> torch.Tensor:
        """``(files, crops, dim)`` embeddings of a ``(files, crops, samples)`` batch, in one forward pass."""
        files, count, samples = crops.shape
        embeddings = self.network(crops.view(files * count, samples).to(self.device)).float().cpu()
        return embeddings.view(files, count, -1)

    @torch.no_grad()
    def embed_files(self, paths, files_per_batch: int | None = None, max_samples: int | None = None,
                    show_progress: bool = False) -> list[torch.Tensor]:
        """``(crops, dim)`` embeddings of the audio files ``paths``, in order, as :meth:`embed` gives them.

        Each file is read once (any sample rate or channel count, see :meth:`waveform`) and waits in a bucket of
        its input shape: whole files (``eval_frames`` 0) share a forward pass only with files of the same length,
        so nothing is padded; fixed crops all have one shape. A bucket is run when it holds ``files_per_batch``
        files or ``max_samples`` samples (defaults: ``--eval``'s batches on this device, see
        :func:`~spknet.evaluation.default_files_per_batch`: ``NUM_EVAL`` files' worth of 4-s crops per file of a
        batch); the fullest bucket is run early when together they hold more than twice ``max_samples``, so memory
        stays bounded for lists of any length and any mix of lengths.
        """
        per_file = files_per_batch or default_files_per_batch(self.device)
        per_batch = files_per_batch or per_file * (NUM_EVAL if not self.eval_frames else 1)
        budget = max_samples or per_file * NUM_EVAL * max_audio_samples(400)
        out: list[torch.Tensor | None] = [None] * len(paths)
        buckets: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}
        held = 0                                            # samples waiting in the buckets
        bar = progress_bar(total=len(paths), enabled=show_progress, desc="embedding", unit="file")

        def run(shape) -> int:
            indices, crops = zip(*buckets.pop(shape))
            for index, embedding in zip(indices, self._forward(torch.from_numpy(np.stack(crops)))):
                out[index] = embedding
            bar.update(len(indices))
            return len(indices) * shape[0] * shape[1]

        for index, path in enumerate(paths):
            crops = self.crops(path)
            buckets.setdefault(crops.shape, []).append((index, crops))
            held += crops.size
            if len(buckets[crops.shape]) >= max(1, min(per_batch, budget // crops.size)):
                held -= run(crops.shape)
            while held > 2 * budget:
                held -= run(max(buckets, key=lambda shape: len(buckets[shape]) * shape[0] * shape[1]))
        for shape in list(buckets):
            run(shape)
        bar.close()
        return out

    def score(self, a, b, sample_rate: int = SAMPLE_RATE) -> float:
        """The ``--eval`` score of two audios (see :meth:`waveform`)."""
        return self.score_embeddings(self.embed(a, sample_rate), self.embed(b, sample_rate))

    def score_embeddings(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """The ``--eval`` score of two ``(crops, dim)`` embeddings from :meth:`embed`."""
        scorer = TrialScorer(torch.stack([a, b]), self.scoring, self.test_normalize, self.device)
        return float(scorer(torch.tensor([0]), torch.tensor([1]))[0])

    def verify(self, a, b, p_target: float = 0.05, c_miss: float = 1.0, c_fa: float = 1.0,
               sample_rate: int = SAMPLE_RATE) -> Verification:
        """Score, LLR and decision (accept when llr > -logit(effective prior of ``p_target`` and the costs)) of
        two audios; needs a calibration."""
        if self.calibration is None:
            raise SpeakerNetError(f"{self.source or 'this model'}: verify needs a calibration to turn scores into "
                                  f"LLRs and decisions, and there is none; make one with python inference.py "
                                  f"calibrate --initial_model {self.source or 'M'} --test_list LABELLED_TRIALS "
                                  f"--test_path DIR (it is saved as {default_path(self.source or 'M')}, which is "
                                  f"then used by default)")
        return self.calibration.decide(self.score(a, b, sample_rate), p_target, c_miss, c_fa)


AUTO = "auto"


def load_embedder(path: str, device: str | torch.device | None = None, trust: bool = False, eval_frames: int = 0,
                  scoring: str = "crops", calibration: str | Calibration | None = AUTO, **overrides) -> Embedder:
    """An :class:`Embedder` for the checkpoint at ``path``; ``overrides`` (model options such as ``nOut``,
    ``encoder_type``, ``audio_scale``, ``trainfunc``) replace what the checkpoint says.

    ``calibration``: ``"auto"`` (default) uses ``path + ".calibration.json"`` when it exists; a file name or a
    :class:`~spknet.calibration.Calibration` uses that one; None uses none. A calibration made for other weights
    or scoring options is an error naming its file.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = load_network(path, trust, overrides)
    config = net.spec.record()
    embedder = Embedder(net.__S__, net.test_normalize, net.spec.pipeline(), device, eval_frames, scoring, path,
                        config)
    if calibration == AUTO:
        beside = default_path(path)
        calibration = beside if os.path.exists(beside) else None
    embedder.use_calibration(Calibration.load(calibration) if isinstance(calibration, (str, os.PathLike))
                             else calibration)
    return embedder
