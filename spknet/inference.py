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
import torch
import torchaudio

from spknet.calibration import (
    Calibration,
    Verification,
    audio_seconds,
    default_path,
    quality_features,
    scoring_options,
    weights_sha256,
)
from spknet.checkpoints import load_network
from spknet.constants import SAMPLE_RATE
from spknet.data import (
    FLOAT,
    INT16_SCALE,
    WINDOW_SAMPLES,
    AudioPipeline,
    TestDataset,
    WaveformDataset,
    check_not_silent,
    read_audio,
)
from spknet.errors import SpeakerNetError
from spknet.evaluation import TrialScorer, cpu_inference_model, extract_dataset

MIN_SAMPLES = WINDOW_SAMPLES    # one 25-ms analysis window: the front end needs more than half of its FFT


class Embedder:
    """Embeddings of audio from a trained network, and their scores as ``--eval`` computes them.

    ``eval_frames`` 0 embeds whole files; N takes the original's 10 crops of N frames. ``scoring``: ``crops`` (the
    original's crop distances) or ``cosine``. ``calibration`` (checked against this network and scoring with
    :meth:`use_calibration`) turns scores into LLRs for :meth:`verify`. Files are read and embedded by ``--eval``'s
    extraction, so they get ``--eval``'s embeddings and scores; on the CPU it runs a copy of ``network`` with its
    BatchNorms folded, made at the first embedding (change the weights through a new Embedder, not in place).
    """

    def __init__(self, network: torch.nn.Module, test_normalize: bool, pipeline: AudioPipeline,
                 device: torch.device, eval_frames: int = 0, scoring: str = "crops", source: str = "",
                 config: dict | None = None):
        self.network = network.to(device).eval()
        self.test_normalize, self.pipeline, self.device = test_normalize, pipeline, device
        self.eval_frames, self.scoring, self.source = eval_frames, scoring, source
        self.calibration: Calibration | None = None
        self.config = dict(config or {})        # the model options it was built with (export records them)
        self._inference_model: torch.nn.Module | None = None

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
        """Mono float32 samples at 16 kHz in [-1, 1] from a path (read by the one reader,
        :func:`~spknet.data.audio.read_audio`) or an array/tensor (float in [-1, 1] or int16; ``(samples,)``,
        ``(samples, channels)`` as soundfile returns or ``(channels, samples)`` as torchaudio; channels averaged,
        ``sample_rate`` resampled to 16 kHz with ``torchaudio.functional.resample`` as the reader does)."""
        if isinstance(audio, (str, os.PathLike)):
            samples = read_audio(str(audio), FLOAT, min_frames=MIN_SAMPLES)
            check_not_silent(samples, str(audio))
            return samples
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
        check_not_silent(samples.numpy(), name)
        return samples.numpy()

    def embed(self, audio, sample_rate: int = SAMPLE_RATE):
        """``(crops, dim)`` embeddings of one audio (see :meth:`waveform`), or a list of them for a list.

        Files go through :meth:`embed_files`; arrays and tensors are cropped by the same crop function and embedded
        by the same extraction (:func:`~spknet.evaluation.extract_dataset`), as one batch of waveforms.
        """
        items = list(audio) if isinstance(audio, (list, tuple)) else [audio]
        out: list[torch.Tensor | None] = [None] * len(items)
        paths = [i for i, item in enumerate(items) if isinstance(item, (str, os.PathLike))]
        arrays = [i for i, item in enumerate(items) if not isinstance(item, (str, os.PathLike))]
        if paths:
            for index, embedding in zip(paths, self.embed_files([items[i] for i in paths])):
                out[index] = embedding
        if arrays:
            waves = [self._model_scale(self.waveform(items[i], sample_rate)) for i in arrays]
            dataset = WaveformDataset(waves, self.eval_frames, pipeline=self.pipeline)
            for index, embedding in zip(arrays, self._extract(dataset)):
                out[index] = embedding
        return out if isinstance(audio, (list, tuple)) else out[0]

    def crops(self, audio, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """The network's input for one audio: ``(crops, samples)`` float32 in the model's input scale, as
        :meth:`embed` cuts them (:func:`~spknet.data.eval_crops`)."""
        if isinstance(audio, (str, os.PathLike)):
            crops, _ = self._files_dataset([str(audio)])[0]
        else:
            wave = self._model_scale(self.waveform(audio, sample_rate))
            crops, _ = WaveformDataset([wave], self.eval_frames, pipeline=self.pipeline)[0]
        return crops.numpy()

    def _model_scale(self, wave: np.ndarray) -> np.ndarray:
        """Samples in [-1, 1] in the network's input scale (the pipeline's)."""
        return wave * INT16_SCALE if self.pipeline.scale == "int16" else wave

    def _files_dataset(self, paths: list[str]) -> TestDataset:
        """The files as --eval reads them, with the embedder's checks: a 25-ms window at least, and not silent."""
        return TestDataset(paths, "", self.eval_frames, pipeline=self.pipeline, min_frames=MIN_SAMPLES,
                           reject_silence=True)

    def _model(self) -> torch.nn.Module:
        """The network as the extraction runs it: on the CPU its folded copy (:func:`cpu_inference_model`), made
        once."""
        if self.device.type != "cpu":
            return self.network
        if self._inference_model is None:
            self._inference_model = cpu_inference_model(self.network)
        return self._inference_model

    def _extract(self, dataset, files_per_batch: int | None = None, max_samples: int | None = None,
                 show_progress: bool = False) -> torch.Tensor:
        return extract_dataset(self._model(), dataset, self.device, files_per_batch=files_per_batch,
                               max_samples=max_samples, show_progress=show_progress, prepared=True)

    def embed_files(self, paths, files_per_batch: int | None = None, max_samples: int | None = None,
                    show_progress: bool = False) -> list[torch.Tensor]:
        """``(crops, dim)`` embeddings of the audio files ``paths``, in order, by ``--eval``'s extraction
        (:func:`~spknet.evaluation.extract_dataset`: the one reader, the same crops, the folded CPU copy, whole
        files batched by equal length, parallel threads; ``files_per_batch`` and ``max_samples`` as there)."""
        paths = [str(path) for path in paths]
        if not paths:
            return []
        return list(self._extract(self._files_dataset(paths), files_per_batch, max_samples, show_progress))

    def score(self, a, b, sample_rate: int = SAMPLE_RATE) -> float:
        """The ``--eval`` score of two audios (see :meth:`waveform`)."""
        return self.score_embeddings(*self.embed([a, b], sample_rate))

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
        quality = None
        if self.calibration.quality:
            quality = quality_features(self.calibration.quality, [self.seconds(a, sample_rate)],
                                       [self.seconds(b, sample_rate)])
        return self.calibration.decide(self.score(a, b, sample_rate), p_target, c_miss, c_fa, quality)

    def seconds(self, audio, sample_rate: int = SAMPLE_RATE) -> float:
        """The duration of an audio: a file's from its header (:func:`~spknet.calibration.audio_seconds`), an
        array's from its length at ``sample_rate`` (see :meth:`waveform`)."""
        if isinstance(audio, (str, os.PathLike)):
            return audio_seconds(str(audio))
        return self.waveform(audio, sample_rate).shape[0] / SAMPLE_RATE


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
