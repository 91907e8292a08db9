"""Evaluating a checkpoint or a training epoch from the specs: the plan (lists and AS-norm cohort), the network
rebuilt from the checkpoint's recorded options, the calibration, and the report ``--eval`` prints."""

import json
import math
import os

import torch

from spknet import atomic, distributed
from spknet import calibration as calibrations
from spknet.checkpoints import epoch_checkpoints, load_network
from spknet.data.kaldi import KaldiAudio, KaldiData, load_kaldi_dir
from spknet.errors import SpeakerNetError
from spknet.evaluation import EvalOptions, EvalOutcome, EvalPlan, evaluate
from spknet.evaluation.metrics import CalibrationMetrics, calibration_metrics
from spknet.evaluation.plots import write_plots
from spknet.evaluation.trials import Cohort, per_list_path, pick_cohort_files, read_cohort, read_plan, write_scores
from spknet.logs import log
from spknet.model import SpeakerNet
from spknet.specs import DataSpec, EvalSpec, ModelSpec

METRICS_FILE = "metrics.json"       # what --eval writes in SAVE_PATH/result/ for programs: the numbers it prints


def asnorm_cohort(evaluation: EvalSpec, data: DataSpec) -> Cohort | None:
    """The AS-norm cohort (``cohort_utterances`` files of each speaker of the training list) when the scores are
    AS-normalised, else None; shared by ``--eval``, training and ``inference.py calibrate``."""
    if evaluation.score_norm != "asnorm":
        return None
    if data.train_data:
        return kaldi_cohort(load_kaldi_dir(data.train_data, data.allow_pipes, data.max_overshoot),
                            evaluation.cohort_utterances)
    if not data.train_list:
        raise SpeakerNetError("--score_norm asnorm needs --train_list (and --train_path) or --train_data: its "
                              "speakers are the cohort")
    return read_cohort(data.train_list, data.train_path, evaluation.cohort_utterances)


def kaldi_cohort(data: KaldiData, per_speaker: int) -> Cohort:
    """Up to ``per_speaker`` utterances of each speaker of a Kaldi data directory, as the AS-norm cohort."""
    if len(data.speakers) < 2:
        raise SpeakerNetError(f"{data.path}: AS-norm needs at least 2 cohort speakers, the data directory has "
                              f"{len(data.speakers)}")
    picked = pick_cohort_files(data.labels, per_speaker)
    return Cohort([data.keys[i] for i in picked], data.labels[picked], KaldiAudio(data))


def load_plan(evaluation: EvalSpec, data: DataSpec, training: bool) -> EvalPlan:
    """The lists to evaluate (the test lists; the validation list in training) and the AS-norm cohort, read and
    checked before anything is written."""
    cohort = asnorm_cohort(evaluation, data)
    val_list = evaluation.val_list if training else ""
    if evaluation.val_list and not training:
        log.info(f"note: the validation list {evaluation.val_list} is used in training only; an evaluation scores "
                 f"the test lists")
    audio = KaldiAudio(load_kaldi_dir(evaluation.test_data, data.allow_pipes, data.max_overshoot)) \
        if evaluation.test_data else None
    return read_plan(evaluation.test_lists(), evaluation.test_path, "training (VEER)" if training else "", val_list,
                     cohort, audio)


def eval_options(evaluation: EvalSpec, model: ModelSpec) -> EvalOptions:
    return EvalOptions(eval_frames=evaluation.eval_frames, num_workers=evaluation.loader_workers,
                       files_per_batch=evaluation.files_per_batch, precision=evaluation.precision,
                       scoring=evaluation.scoring, score_norm=evaluation.score_norm,
                       cohort_size=evaluation.cohort_size, p_targets=evaluation.p_targets,
                       c_miss=evaluation.c_miss, c_fa=evaluation.c_fa, show_progress=distributed.is_main(),
                       pipeline=model.pipeline(), short_files=evaluation.short_files)


def evaluation_of(net: SpeakerNet, evaluation: EvalSpec, plan: EvalPlan, device: torch.device) -> EvalOutcome:
    audio = plan.audio if plan.audio is not None else evaluation.test_path
    return evaluate(net.__S__, net.test_normalize, plan, audio, eval_options(evaluation, net.spec), device)


def checkpoint_to_evaluate(initial_model: str, save_path: str) -> str:
    """The checkpoint an evaluation scores: ``initial_model``, else the newest in ``save_path/model``."""
    held = epoch_checkpoints(os.path.join(save_path, "model"))
    source = initial_model or (held[-1][1] if held else None)
    if not source:
        raise SpeakerNetError("nothing to evaluate: give the checkpoint (--initial_model), or a run folder "
                              "(--save_path) with a checkpoint in its model/ folder")
    return source


def resolve_calibration(net: SpeakerNet, source: str, evaluation: EvalSpec, data: DataSpec):
    """The calibration of an evaluation (``evaluation.calibration``, else the one beside the model, else None),
    checked against the loaded weights and this evaluation's scoring options before anything is scored."""
    calibration = calibrations.resolve(source, evaluation.calibration)
    if calibration is None:
        return None
    options = calibrations.scoring_options(evaluation.eval_frames, evaluation.scoring, evaluation.score_norm,
                                           net.test_normalize, net.spec.audio_scale, net.spec.pad,
                                           evaluation.short_files, evaluation.cohort_size,
                                           evaluation.cohort_utterances, data.train_list or data.train_data)
    calibration.check(calibrations.weights_sha256(net.__S__), options)
    log.info(f"Calibration {calibration.source} loaded: {calibration.formula()}")
    return calibration


def evaluate_checkpoint(source: str, evaluation: EvalSpec, data: DataSpec, device: torch.device,
                        overrides: dict | None = None, trust: bool = False):
    """Score checkpoint ``source`` on the lists of ``evaluation``: the outcome, the calibration (or None) and the
    network. The network is rebuilt from the options the checkpoint records (``overrides``, the model options
    given explicitly, win; one that does not fit the weights is an error); no loss, optimizer or scheduler."""
    plan = load_plan(evaluation, data, training=False)
    net = load_network(source, trust, overrides).to(device)
    log.info(f"Model {source} loaded!")
    calibration = resolve_calibration(net, source, evaluation, data)
    return evaluation_of(net, evaluation, plan, device), calibration, net


def list_calibration_metrics(evaluation: EvalSpec, scores, trial_list, calibration) -> CalibrationMetrics:
    """minCllr always (it needs no calibration: it is what the best monotonic calibration would reach); Cllr
    and actDCF at each p_target of the calibrated LLRs when there is a calibration (with its quality measures,
    computed from the trials' audio files as ``inference.py calibrate`` computed them)."""
    llrs = None
    if calibration is not None:
        quality = calibrations.trial_quality(calibration.quality, trial_list.trials, evaluation.test_path) \
            if calibration.quality else None
        llrs = calibration.llr(scores, quality)
    return calibration_metrics(scores, trial_list.labels, llrs, evaluation.p_targets, evaluation.c_miss,
                               evaluation.c_fa)


def metrics_record(model: str, evaluation: EvalSpec, calibration) -> dict:
    """The head of ``result/metrics.json``: what was evaluated, and how (its ``lists`` follow)."""
    return {"model": model, "eval_frames": evaluation.eval_frames, "scoring": evaluation.scoring,
            "score_norm": evaluation.score_norm, "calibration": calibration.source if calibration else None,
            "p_targets": list(evaluation.p_targets), "c_miss": evaluation.c_miss, "c_fa": evaluation.c_fa,
            "lists": []}


def list_record(trial_list, metrics, calibrated: CalibrationMetrics | None) -> dict:
    """One list's entry of ``result/metrics.json`` (minDCF and actDCF keyed by p_target as ``%g``; the metrics
    None for a list without labels, Cllr and actDCF None without a calibration)."""
    def number(value):          # JSON has no infinity (an EER threshold can be one): null
        return float(value) if value is not None and math.isfinite(value) else None

    def by_prior(values: dict) -> dict:
        return {f"{p:g}": number(value) for p, value in values.items()}
    return {"path": trial_list.path, "name": trial_list.name, "published": trial_list.published,
            "trials": len(trial_list.trials), "eer": number(metrics.eer) if metrics else None,
            "eer_threshold": number(metrics.eer_threshold) if metrics else None,
            "min_dcf": by_prior({p: value for p, (value, _) in metrics.min_dcf.items()}) if metrics else None,
            "min_cllr": number(calibrated.min_cllr) if calibrated else None,
            "cllr": number(calibrated.cllr) if calibrated else None,
            "act_dcf": by_prior(calibrated.act_dcf) if calibrated and calibrated.act_dcf else None}


def report(outcome: EvalOutcome, evaluation: EvalSpec, result_dir: str, calibration=None, model: str = "") -> None:
    """The ``--eval`` report: per list its EER line (the original's ``EER %2.4f``), minDCF, calibration
    metrics, plots, and the score and embedding files asked for; the numbers also in ``result_dir/metrics.json``
    (``model``: the checkpoint evaluated), for programs to read."""
    several = len(outcome.tests) > 1
    files = len(outcome.store.files)
    record = metrics_record(model, evaluation, calibration)
    log.info(f"{files} files embedded once for {len(outcome.tests)} list(s); evaluation {outcome.seconds:.1f} s")
    for result in outcome.tests:
        trial_list = result.trial_list
        published = f"{trial_list.published}, " if trial_list.published else ""
        log.info(f"== {trial_list.path}: {len(trial_list.trials)} trials ({published}{evaluation.scoring} scoring"
                 f"{', AS-norm' if evaluation.score_norm == 'asnorm' else ''})")
        calibrated = None
        if result.metrics is not None:
            log.info("EER %2.4f" % result.metrics.eer)
            log.info(result.metrics.report())
            calibrated = list_calibration_metrics(evaluation, result.scores, trial_list, calibration)
            log.info(calibrated.summary())
            if distributed.is_main():
                plots = write_plots(result.scores, trial_list.labels, result_dir,
                                    "_eval" + (f"_{trial_list.name}" if several else ""), eer=result.metrics.eer)
                log.info(f"DET curve and score histogram: {', '.join(plots)}")
        else:
            log.info(f"{len(trial_list.trials)} unlabelled trials scored (no EER without labels)")
        if evaluation.save_scores and distributed.is_main():
            path = per_list_path(evaluation.save_scores, trial_list.name) if several else evaluation.save_scores
            write_scores(path, result.scores, trial_list.trials)
            log.info(f"scores written to {path}")
        record["lists"].append(list_record(trial_list, result.metrics, calibrated))
    if evaluation.save_embeddings and distributed.is_main():
        outcome.store.save_npz(evaluation.save_embeddings)
        log.info(f"{files} embeddings written to {evaluation.save_embeddings}")
    if distributed.is_main():
        os.makedirs(result_dir, exist_ok=True)
        atomic.write_text(os.path.join(result_dir, METRICS_FILE), json.dumps(record, indent=2) + "\n")
