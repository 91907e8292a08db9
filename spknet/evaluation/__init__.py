"""Evaluation of an embedding network on trial lists: the one owner of everything from a list to an EER.

* :mod:`.trials`: trial lists, the plan (test lists, validation list, AS-norm cohort), score files;
* :mod:`.extraction`: embeddings of files (batched, sharded over ranks), the embedding store;
* :mod:`.scoring`: trial scores (the original's crop distances, cosine) and AS-norm;
* :mod:`.metrics`: EER and minDCF, Cllr, minCllr and actDCF; :mod:`.plots`: DET curve and score histogram.

The entry is :func:`evaluate`: it takes the embedding network (waveforms to embeddings) and whether its crops are
L2-normalised before scoring (the loss's ``test_normalize``), never a trainer.
"""

import time
from dataclasses import dataclass

import numpy as np
import torch

from spknet.data import ORIGINAL, AudioPipeline
from spknet.evaluation.extraction import (
    EVAL_PRECISIONS,
    EmbeddingStore,
    available_cores,
    cpu_has_native_bf16,
    cpu_inference_model,
    cpu_loader_workers,
    default_files_per_batch,
    embed_files,
    equal_length_batches,
    extract_dataset,
    extract_embeddings,
)
from spknet.evaluation.metrics import (
    CalibrationMetrics,
    Metrics,
    act_dcf,
    calibration_metrics,
    cllr,
    compute_metrics,
    min_cllr,
)
from spknet.evaluation.plots import write_plots
from spknet.evaluation.scoring import (
    SCORE_NORMS,
    SCORINGS,
    TrialScorer,
    as_norm,
    cohort_statistics,
    cosine_scores,
    crop_norms,
    crop_scores,
    mean_embeddings,
    speaker_means,
    top_cohort_statistics,
)
from spknet.evaluation.threads import single_threaded_pool
from spknet.evaluation.trials import (
    Cohort,
    EvalPlan,
    Trial,
    TrialList,
    list_names,
    per_list_path,
    pick_cohort_files,
    read_cohort,
    read_plan,
    read_trial_list,
    read_trials,
    write_scores,
)
from spknet.folding import fold_batch_norms, inference_copy


@dataclass(frozen=True)
class EvalOptions:
    """How files are embedded and trials scored. ``eval_frames`` 0 embeds whole files."""
    eval_frames: int
    num_workers: int = 0
    files_per_batch: int | None = None
    precision: str = "fp32"
    scoring: str = "crops"
    score_norm: str = "none"
    cohort_size: int = 200
    p_targets: tuple[float, ...] = (0.05, 0.01)
    c_miss: float = 1.0
    c_fa: float = 1.0
    show_progress: bool = True
    pipeline: AudioPipeline = ORIGINAL
    short_files: str = "pad"

    def extraction(self) -> dict:
        return dict(num_workers=self.num_workers, files_per_batch=self.files_per_batch,
                    show_progress=self.show_progress, precision=self.precision, pipeline=self.pipeline,
                    short_files=self.short_files)


@dataclass
class ListResult:
    trial_list: TrialList
    scores: np.ndarray
    metrics: Metrics | None          # None for an unlabelled list


@dataclass
class EvalOutcome:
    tests: list[ListResult]
    val: ListResult | None
    store: EmbeddingStore
    seconds: float


@torch.no_grad()
def score_lists(network: torch.nn.Module, test_normalize: bool, trial_lists: list[list[Trial]], root: str,
                options: EvalOptions, device: torch.device,
                cohort: Cohort | None = None) -> tuple[EmbeddingStore, list[np.ndarray]]:
    """Scores of several trial lists (each in list order); a file shared by lists is embedded once.

    With ``options.score_norm == "asnorm"`` the scores are AS-normalised against ``cohort``, whose per-speaker mean
    embeddings are the cohort vectors, using each file's ``options.cohort_size`` top cohort scores.
    """
    network.eval()
    files = sorted({path for trials in trial_lists for trial in trials for path in (trial.enroll, trial.test)})
    embeddings = embed_files(network, files, root, options.eval_frames, device, **options.extraction())
    store = EmbeddingStore(files, embeddings)
    scorer = TrialScorer(store.embeddings, options.scoring, test_normalize, device)
    pairs = [(store.indices(t.enroll for t in trials), store.indices(t.test for t in trials))
             for trials in trial_lists]
    results = [scorer(enroll, test) for enroll, test in pairs]
    if options.score_norm == "asnorm":
        cohort_audio = cohort.audio if cohort.audio is not None else ""
        cohort_embeddings = embed_files(network, list(cohort.files), cohort_audio, options.eval_frames, device,
                                        **options.extraction())
        _, speakers = np.unique(np.asarray(cohort.speakers), return_inverse=True)
        means = speaker_means(cohort_embeddings, speakers, test_normalize)
        mean, std = cohort_statistics(scorer, torch.arange(len(files)), means, options.cohort_size)
        results = [as_norm(scores, enroll, test, mean, std) for scores, (enroll, test) in zip(results, pairs)]
    return store, [scores.numpy() for scores in results]


def evaluate(network: torch.nn.Module, test_normalize: bool, plan: EvalPlan, root: str, options: EvalOptions,
             device: torch.device) -> EvalOutcome:
    """Scores and (for labelled lists) metrics of every list of ``plan``; files shared by lists are embedded once.

    ``network`` maps ``(batch, samples)`` waveforms to embeddings and is put in eval mode; ``root`` is the folder
    the lists' paths are relative to, or the evaluation audio their keys name (``plan.audio``, say a Kaldi data
    directory's utterances: :func:`~spknet.data.as_test_audio`).
    """
    started = time.time()
    lists = plan.lists
    store, scores = score_lists(network, test_normalize, [trial_list.trials for trial_list in lists], root,
                                options, device, plan.cohort)
    p_targets = tuple(dict.fromkeys(options.p_targets))
    results = []
    for trial_list, list_scores in zip(lists, scores):
        metrics = None
        if trial_list.labelled:
            metrics = compute_metrics(list_scores, trial_list.labels, p_targets, options.c_miss, options.c_fa)
        results.append(ListResult(trial_list, list_scores, metrics))
    val = results.pop() if plan.val is not None else None
    return EvalOutcome(results, val, store, time.time() - started)


__all__ = [
    "EVAL_PRECISIONS", "SCORE_NORMS", "SCORINGS", "Cohort", "EmbeddingStore", "EvalOptions", "EvalOutcome", "EvalPlan",
    "ListResult", "Metrics", "Trial", "TrialList", "TrialScorer", "as_norm", "available_cores", "cohort_statistics",
    "compute_metrics", "cosine_scores", "cpu_has_native_bf16", "cpu_inference_model", "cpu_loader_workers",
    "crop_norms", "crop_scores", "default_files_per_batch", "embed_files", "equal_length_batches", "evaluate",
    "extract_dataset", "extract_embeddings", "fold_batch_norms", "inference_copy", "list_names", "mean_embeddings",
    "per_list_path", "pick_cohort_files", "read_cohort", "read_plan", "read_trial_list", "read_trials", "score_lists",
    "single_threaded_pool", "speaker_means", "top_cohort_statistics", "write_plots", "write_scores",
    # calibration metrics
    "CalibrationMetrics", "act_dcf", "calibration_metrics", "cllr", "min_cllr",
]
