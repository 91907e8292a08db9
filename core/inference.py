"""A trained model outside the trainer: the model configuration a checkpoint carries (or its keys tell), and an
embedder for any audio, scored as ``--eval`` scores.

SpeakerNet's own checkpoints carry their run's options (``checkpoint["run"]["options"]``); for the original's
and voxceleb_trainer-layout state dicts the keys and shapes tell the rest: ``nOut`` from the last layer, SAP or
ASP from its input size, ``n_mels`` and the window from the front end's buffers. What they cannot tell is an error
naming the option to give.
"""

import os

import numpy as np
import soundfile as sf
import torch
import torchaudio

from core import SAMPLE_RATE
from core.checkpoints import load_model_state, read_checkpoint
from core.errors import SpeakerNetError
from core.evaluation import TrialScorer, default_files_per_batch
from core.progress import progress_bar
from DatasetLoader import INT16_SCALE, NUM_EVAL, AudioPipeline, eval_crops, max_audio_samples
from SpeakerNet import SpeakerNet

MODEL_OPTIONS = ("model", "encoder_type", "nOut", "n_mels", "log_input", "window", "audio_scale", "pad",
                 "trainfunc")
ORIGINAL_DEFAULTS = {"log_input": True, "audio_scale": "int16", "pad": "zero", "trainfunc": ""}
MIN_SAMPLES = 400           # one 25-ms analysis window: the front end needs more than half of its FFT
# Residual layout (blocks per layer, stem channels) of each model plugin that the keys can identify
KNOWN_LAYOUTS = {((3, 4, 6, 3), 16): "ResNetSE34L"}


def _blocks(state: dict, layer: int) -> int:
    prefix = f"__S__.layer{layer}."
    return 1 + max((int(key[len(prefix):].split(".")[0]) for key in state if key.startswith(prefix)), default=-1)


def _window(window: torch.Tensor) -> str | None:
    for name, make in (("hann", torch.hann_window), ("hamming", torch.hamming_window)):
        if window.shape == (400,) and torch.allclose(window.float(), make(400), atol=1e-6):
            return name
    return None


def infer_model_config(state: dict, source: str) -> dict:
    """What the keys and shapes of a ResNetSE state dict say about its model."""
    needed = ["__S__.fc.weight", "__S__.sap_linear.weight", "__S__.conv1.weight", "__S__.torchfb.mel_scale.fb",
              "__S__.torchfb.spectrogram.window"]
    missing = [key for key in needed if key not in state]
    if missing:
        raise SpeakerNetError(f"{source}: cannot tell the model from its keys (no {missing[0]}); give model=..., "
                              f"encoder_type=..., nOut=... (--model, --encoder_type, --nOut)")
    layout = (tuple(_blocks(state, layer) for layer in (1, 2, 3, 4)), state["__S__.conv1.weight"].shape[0])
    channels = state["__S__.sap_linear.weight"].shape[0]
    pooled = state["__S__.fc.weight"].shape[1]
    config = {
        "model": KNOWN_LAYOUTS.get(layout),
        "encoder_type": {channels: "SAP", 2 * channels: "ASP"}.get(pooled),
        "nOut": state["__S__.fc.weight"].shape[0],
        "n_mels": state["__S__.torchfb.mel_scale.fb"].shape[1],
        "window": _window(state["__S__.torchfb.spectrogram.window"]),
    }
    unknown = [key for key, value in config.items() if value is None]
    if unknown:
        raise SpeakerNetError(f"{source}: cannot tell {', '.join(unknown)} from its keys; give "
                              + ", ".join(f"{key}=... (--{key})" for key in unknown))
    return {**ORIGINAL_DEFAULTS, **config}


def model_config(checkpoint: dict, source: str, overrides: dict) -> dict:
    """The checkpoint's own model options (or what its keys say), with ``overrides`` (not None) on top."""
    saved = (checkpoint.get("run") or {}).get("options") or {}
    config = {key: saved[key] for key in MODEL_OPTIONS if key in saved}
    if "model" not in config:
        config = infer_model_config(checkpoint["model_state_dict"], source)
    config.update({key: value for key, value in overrides.items() if value is not None})
    return config


class Embedder:
    """Embeddings of audio from a trained network, and their scores as ``--eval`` computes them.

    ``eval_frames`` 0 embeds whole files; N takes the original's 10 crops of N frames. ``scoring``: ``crops`` (the
    original's crop distances) or ``cosine``.
    """

    def __init__(self, network: torch.nn.Module, test_normalize: bool, pipeline: AudioPipeline,
                 device: torch.device, eval_frames: int = 0, scoring: str = "crops", source: str = "",
                 config: dict | None = None):
        self.network = network.to(device).eval()
        self.test_normalize, self.pipeline, self.device = test_normalize, pipeline, device
        self.eval_frames, self.scoring, self.source = eval_frames, scoring, source
        self.config = dict(config or {})        # the model options it was built with (export records them)

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
        :func:`~core.evaluation.default_files_per_batch`: ``NUM_EVAL`` files' worth of 4-s crops per file of a
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


def load_embedder(path: str, device: str | torch.device | None = None, trust: bool = False, eval_frames: int = 0,
                  scoring: str = "crops", **overrides) -> Embedder:
    """An :class:`Embedder` for the checkpoint at ``path``; ``overrides`` (model options such as ``nOut``,
    ``encoder_type``, ``audio_scale``, ``trainfunc``) replace what the checkpoint says."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    checkpoint = read_checkpoint(path, trust)
    config = model_config(checkpoint, path, overrides)
    net = SpeakerNet(**{**config, "with_loss": False})
    load_model_state(net, checkpoint["model_state_dict"], path, prefixes=("__S__.",), strict=True)
    pipeline = AudioPipeline(scale=config.get("audio_scale", "int16"), pad=config.get("pad", "zero"))
    return Embedder(net.__S__, net.test_normalize, pipeline, device, eval_frames, scoring, path, config)
