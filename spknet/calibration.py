"""Score calibration: an affine map from a model's trial scores to log-likelihood ratios, fitted on a labelled
trial list, saved beside the model as a small JSON file, and checked before it is used.

``llr = scale * score + offset`` (natural log). The fit is a logistic regression of the labels on the score with
balanced class weights: each class weighs one half whatever its count, which is the objective of Cllr (the mean
of the two classes' cross-entropies at prior 0.5). The fitted log-odds are then posterior log-odds at prior 0.5,
that is LLRs, independent of the list's proportion of target trials; a decision at any prior and costs is
``llr > -logit(effective prior)``.

A calibration holds only for the weights and the scoring it was fitted with: the file records a SHA-256 of the
embedding network's tensors and the options that shape the scores, and :meth:`Calibration.check` refuses any
other model or scoring with an error naming the file.
"""

import hashlib
import json
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

from spknet import atomic
from spknet.errors import SpeakerNetError
from spknet.evaluation.metrics import act_dcf, bayes_threshold, cllr, min_cllr

FORMAT = "speakernet-calibration"
VERSION = 1
SUFFIX = ".calibration.json"
# A weak L2 penalty on the standardised score (scikit-learn's C; the data term sums to the trial count): no
# measurable pull on any real list, and a finite scale on a list that the scores separate perfectly.
REGULARISATION_C = 1e6
FIT_METHOD = "logistic regression of label on score, balanced class weights (prior 0.5), scikit-learn"


def default_path(model_path: str) -> str:
    """Where the calibration of a checkpoint lives: beside it, ``M.calibration.json``."""
    return f"{model_path}{SUFFIX}"


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(network: torch.nn.Module) -> str:
    """SHA-256 of the embedding network's (``__S__``) tensors, parameters and buffers, in sorted key order: each
    key (with its ``__S__.`` prefix), dtype and shape, then the tensor's bytes. The same weights give the same
    hash whatever the checkpoint's layout (flat, ``module.``-prefixed, SpeakerNet's) or the device."""
    digest = hashlib.sha256()
    state = network.state_dict()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"__S__.{key} {tensor.dtype} {tuple(state[key].shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def scoring_options(eval_frames: int, scoring: str, score_norm: str, test_normalize: bool, audio_scale: str,
                    pad: str, short_files: str = "pad", cohort_size: int | None = None,
                    cohort_utterances: int | None = None, cohort_list: str | None = None) -> dict:
    """The options that shape the score distribution, as a calibration records them. The AS-norm cohort (its
    sizes and the SHA-256 of the ``cohort_list`` file, so a moved copy is the same cohort) counts only with
    AS-norm. The embedding precision is left out: bf16 moves scores by about 1e-5, far below what moves a
    calibration."""
    options = {"eval_frames": int(eval_frames), "scoring": scoring, "score_norm": score_norm,
               "test_normalize": bool(test_normalize), "audio_scale": audio_scale, "pad": pad,
               "short_files": short_files if eval_frames else "pad"}   # whole files have no short-file policy
    if score_norm == "asnorm":
        options.update(cohort_size=int(cohort_size), cohort_utterances=int(cohort_utterances),
                       cohort_list_sha256=file_sha256(cohort_list))
    return options


def fit_affine(scores, labels) -> tuple[float, float]:
    """``(scale, offset)`` of the balanced logistic regression (see the module docstring). The score is
    standardised for the solver and the coefficients mapped back to the raw score."""
    from sklearn.linear_model import LogisticRegression
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if labels.size == 0 or labels.min() == labels.max():
        raise SpeakerNetError("a calibration needs both target (1) and non-target (0) trials")
    mean, std = scores.mean(), scores.std()
    if not std > 0:
        raise SpeakerNetError("every trial has the same score: nothing to calibrate")
    model = LogisticRegression(C=REGULARISATION_C, class_weight="balanced", max_iter=1000)
    model.fit(((scores - mean) / std)[:, None], labels)
    slope, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
    return slope / std, intercept - slope * mean / std


def metrics_of(llrs, labels, scores, p_targets, c_miss: float = 1.0, c_fa: float = 1.0) -> dict:
    """Cllr and actDCF of ``llrs``, minCllr of ``scores`` (the same for any monotonic map of them)."""
    return {"cllr": cllr(llrs, labels), "min_cllr": min_cllr(scores, labels),
            "act_dcf": {f"{p:g}": act_dcf(llrs, labels, p, c_miss, c_fa) for p in p_targets}}


@dataclass(frozen=True)
class Verification:
    """One trial decided: the ``--eval`` score, its LLR and whether it passes the operating point's threshold."""
    score: float
    llr: float
    accept: bool
    threshold: float        # accept when llr > threshold (-logit of the effective prior)
    p_target: float

    @property
    def decision(self) -> str:
        return "accept" if self.accept else "reject"


REQUIRED = {"scale": float, "offset": float, "weights_sha256": str, "scoring": dict, "trial_list": dict,
            "trials": dict}


@dataclass
class Calibration:
    scale: float
    offset: float
    weights_sha256: str
    scoring: dict               # scoring_options() it was fitted with
    trial_list: dict            # {"path", "sha256"} of the list it was fitted on
    trials: dict                # {"target": n, "non_target": n}
    model: str = ""             # the checkpoint's path when fitted (information only: the hash decides)
    fit: str = FIT_METHOD
    metrics: dict | None = None  # {"before": ..., "after": ...} on the fitting list
    source: str = ""            # the file it was read from (not saved)

    def llr(self, scores):
        """LLRs of scores (a float, or an array of any shape)."""
        return self.scale * np.asarray(scores, dtype=np.float64) + self.offset

    def formula(self) -> str:
        """``llr = 8.1605 * score + 3.00652``, for the logs."""
        return f"llr = {self.scale:.6g} * score {'-' if self.offset < 0 else '+'} {abs(self.offset):.6g}"

    def decide(self, score: float, p_target: float = 0.05, c_miss: float = 1.0, c_fa: float = 1.0) -> Verification:
        llr = float(self.llr(score))
        threshold = bayes_threshold(p_target, c_miss, c_fa)
        return Verification(float(score), llr, llr > threshold, threshold, p_target)

    def to_json(self) -> dict:
        saved = {key: value for key, value in asdict(self).items() if key != "source"}
        return {"format": FORMAT, "version": VERSION, **saved}

    def save(self, path: str) -> None:
        """Write atomically (temporary file, fsync, rename): a crash leaves the previous file or none."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic.write_text(path, json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str) -> "Calibration":
        """Read and check a calibration file; anything unreadable, missing or mistyped is an error naming it."""
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            raise SpeakerNetError(f"{path}: calibration file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SpeakerNetError(f"{path}: not a readable calibration file ({error})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SpeakerNetError(f"{path}: not a SpeakerNet calibration file (no \"format\": \"{FORMAT}\")")
        if data.get("version") != VERSION:
            raise SpeakerNetError(f"{path}: calibration format version {data.get('version')!r}, this SpeakerNet "
                                  f"reads version {VERSION}")
        missing = [key for key in REQUIRED if key not in data]
        if missing:
            raise SpeakerNetError(f"{path}: calibration file misses field(s) {', '.join(missing)}; make it again "
                                  f"with python inference.py calibrate")
        for key, kind in REQUIRED.items():
            value = data[key]
            wrong = isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind)
            if wrong or (kind is float and not np.isfinite(value)):
                raise SpeakerNetError(f"{path}: calibration field {key!r} should be a "
                                      f"{'finite number' if kind is float else kind.__name__}, got {value!r}")
        known = {key: data[key] for key in cls.__dataclass_fields__ if key in data and key != "source"}
        return cls(**{**known, "scale": float(data["scale"]), "offset": float(data["offset"])}, source=path)

    def check(self, weights: str, options: dict) -> None:
        """Refuse another model's weights or other scoring options, naming the file and what differs."""
        name = self.source or "the calibration"
        if weights != self.weights_sha256:
            raise SpeakerNetError(f"{name}: calibration made for other model weights (weights sha256 "
                                  f"{self.weights_sha256[:12]}..., this model's {weights[:12]}...); calibrate this "
                                  f"model with python inference.py calibrate")
        differences = [f"{key}: calibrated with {self.scoring.get(key)!r}, now {options.get(key)!r}"
                       for key in sorted(set(self.scoring) | set(options))
                       if self.scoring.get(key) != options.get(key)]
        if differences:
            raise SpeakerNetError(f"{name}: calibration made for other scoring options ({'; '.join(differences)}); "
                                  f"score with its options or calibrate for these")


def calibrate(scores, labels, weights: str, options: dict, list_path: str, model: str = "",
              p_targets=(0.05, 0.01), c_miss: float = 1.0, c_fa: float = 1.0) -> Calibration:
    """Fit a :class:`Calibration` to a labelled list's scores; its metrics before (the raw scores read as LLRs)
    and after are kept in it."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    scale, offset = fit_affine(scores, labels)
    calibration = Calibration(scale, offset, weights, dict(options),
                              {"path": os.path.abspath(list_path), "sha256": file_sha256(list_path)},
                              {"target": int(np.sum(labels == 1)), "non_target": int(np.sum(labels == 0))},
                              model=os.path.abspath(model) if model else "")
    calibration.metrics = {"before": metrics_of(scores, labels, scores, p_targets, c_miss, c_fa),
                           "after": metrics_of(calibration.llr(scores), labels, scores, p_targets, c_miss, c_fa)}
    return calibration


def resolve(model_path: str, explicit: str | None) -> Calibration | None:
    """The calibration to use with a checkpoint: ``explicit`` (a file that must exist), else the file beside the
    model if there is one, else None."""
    if explicit:
        return Calibration.load(explicit)
    beside = default_path(model_path)
    return Calibration.load(beside) if os.path.exists(beside) else None


def describe(metrics: dict) -> str:
    """One line of :func:`metrics_of`'s values."""
    dcfs = ", ".join(f"actDCF(p={p}) {value:.4f}" for p, value in metrics["act_dcf"].items())
    return f"Cllr {metrics['cllr']:.4f}, minCllr {metrics['min_cllr']:.4f}, {dcfs}"
