#!/usr/bin/env python3
"""Use a trained model outside the trainer.

    python inference.py embed --initial_model M a.wav b.wav ... --out emb.npz    (or --list FILE --root DIR)
    python inference.py verify --initial_model M a.wav b.wav                 (score; LLR and decision when calibrated)
    python inference.py calibrate --initial_model M --test_list dev.txt --test_path DIR      (writes M.calibration.json;
                                  --quality duration: the enrolment and test durations enter the calibration)
    python inference.py export --initial_model M --format onnx|torch_export --out model.onnx|model.pt2
    python inference.py average --save_path RUN --last 3           (or --epochs 8,9,10; --out FILE)
    python inference.py enroll --initial_model M --db speakers.db --speaker NAME a.wav b.wav   (or --list FILE)
    python inference.py speakers --db speakers.db                  (--remove NAME, --rename OLD NEW)
    python inference.py identify --initial_model M --db speakers.db x.wav ...  (top speakers, or 'unknown' below
                                  the threshold: --threshold T, or --far 0.01 --test_list TRIALS --test_path DIR)
    python inference.py import --from wespeaker|pyannote|speechbrain FILE [--config THEIR_CONFIG] --out M.model
    python inference.py import --from 3dspeaker FILE [--model-id MODEL_ID | --config CONF.yaml] --out M.model
                                  (another toolkit's published checkpoint as a SpeakerNet one: docs/inference.md)

The checkpoint says which model it is (SpeakerNet's own carry their options; for the original's state dicts the
keys tell); model flags given here override it. Any sample rate is resampled to 16 kHz and stereo is mixed down.
"""

import argparse
import os
import sys

import torch

from spknet import calibration as calibrations
from spknet import checkpoints, importing
from spknet.argtypes import at_least
from spknet.data import read_lines, read_train_list
from spknet.errors import SpeakerNetError, exit_status
from spknet.evaluation import EmbeddingStore, EvalOptions, evaluate, read_plan, read_trial_list
from spknet.evaluation.runner import asnorm_cohort
from spknet.export import FORMATS, export_model
from spknet.inference import AUTO, load_embedder
from spknet.speakers import SpeakerDB, Threshold
from spknet.specs import MODEL_FIELDS, DataSpec, EvalSpec, ModelSpec


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("embed", "one embedding per file, saved as .npz"),
                            ("verify", "the score of two files")):
        add_model_arguments(commands.add_parser(name, help=help_text))
    embed = commands.choices["embed"]
    embed.add_argument("files", nargs="*", help="audio files")
    embed.add_argument("--list", default="", help="a file of audio paths, one per line (relative to --root)")
    embed.add_argument("--root", default="", help="folder the --list paths are relative to")
    embed.add_argument("--out", required=True, help="the .npz to write: file name -> (crops, dim) embedding")
    embed.add_argument("--batch_size", type=int, default=None,
                       help="files per forward pass, as --eval counts them (default: as --eval batches them on "
                            "this device; whole files: up to 10x as many files of one length)")
    verify = commands.choices["verify"]
    verify.add_argument("files", nargs=2, help="the two audio files")
    verify.add_argument("--calibration", default=None,
                        help="calibration file (default: M.calibration.json beside the model, when present; "
                             "none: the score alone)")
    verify.add_argument("--p_target", type=float, default=0.05,
                        help="with a calibration: the target prior of the decision (costs 1 and 1)")
    add_calibrate_command(commands)
    export = commands.add_parser("export", help="the network, waveform to embedding, as ONNX or a torch.export "
                                                "program")
    add_model_arguments(export, scoring=False)
    export.add_argument("--format", required=True, choices=FORMATS,
                        help="onnx (onnxruntime) or torch_export (a .pt2 for torch.export.load)")
    export.add_argument("--out", required=True, help="the file to write (.onnx or .pt2)")
    add_average_parser(commands)
    add_speaker_commands(commands)
    add_import_command(commands)
    return parser


def add_model_arguments(command: argparse.ArgumentParser, scoring: bool = True) -> None:
    """The checkpoint, its model overrides and (with ``scoring``) how its scores are made: every subcommand's flags
    (export writes the network alone, on the CPU)."""
    command.add_argument("--initial_model", required=True, help="checkpoint (SpeakerNet's, the original's)")
    if scoring:
        command.add_argument("--eval_frames", type=int, default=0,
                             help="0: whole files (default); N: the original's 10 crops of N frames")
        command.add_argument("--scoring", choices=["crops", "cosine"], default="crops")
        command.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    command.add_argument("--trust_checkpoint", action="store_true",
                         help="load a checkpoint whose pickle holds other objects than tensors (RUNS its code)")
    for name, kind in model_option_types().items():
        if kind is bool:
            command.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None,
                                 help="override the checkpoint's own value")
        else:
            command.add_argument(f"--{name}", type=kind, default=None, help="override the checkpoint's own value")


def model_option_types() -> dict:
    """Each model option (:class:`~spknet.specs.ModelSpec`, the one list) with the type of its value."""
    defaults = ModelSpec()
    types = {"nOut": int, "n_mels": int, "channels": int}
    return {name: types.get(name, type(getattr(defaults, name))) for name in MODEL_FIELDS}


def add_average_parser(commands) -> None:
    average = commands.add_parser("average", help="a checkpoint whose weights are the mean of a run's epochs")
    average.add_argument("--save_path", required=True, help="the training run's folder (its epoch checkpoints in "
                                                            "model/)")
    chosen = average.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--last", type=int, help="average the newest N epoch checkpoints")
    chosen.add_argument("--epochs", help="average these epochs' checkpoints, e.g. 8,9,10")
    average.add_argument("--out", default="", help="the file to write (default: --save_path/model/"
                                                   "average_lastN.model or average_A_B_C.model)")
    average.add_argument("--trust_checkpoint", action="store_true",
                         help="read checkpoints whose pickle holds other objects than tensors (RUNS their code)")


def embedder_for(args, calibration=None):
    overrides = {key: getattr(args, key) for key in MODEL_FIELDS}
    options = {"device": "cpu", "calibration": None} if args.command == "export" else {
        "device": args.device, "eval_frames": args.eval_frames, "scoring": args.scoring, "calibration": calibration}
    return load_embedder(args.initial_model, trust=args.trust_checkpoint, **options, **overrides)


def files_to_embed(args) -> list[str]:
    files = list(args.files)
    if args.list:
        files += [os.path.join(args.root, line.strip()) for line in read_lines(args.list) if line.strip()]
    if not files:
        raise SpeakerNetError("embed: no audio given (files, or --list FILE)")
    return list(dict.fromkeys(files))


def run_embed(args) -> None:
    files = files_to_embed(args)
    embedder = embedder_for(args)
    if args.batch_size is not None and args.batch_size < 1:
        raise SpeakerNetError(f"embed: --batch_size {args.batch_size}: give 1 or more files per forward pass")
    embeddings = embedder.embed_files(files, args.batch_size, show_progress=True)
    EmbeddingStore(files, torch.stack(embeddings)).save_npz(args.out)
    print(f"{len(files)} embeddings ({embeddings[0].shape[0]} x {embeddings[0].shape[1]}) written to {args.out}")


def run_verify(args) -> None:
    """The score; with a calibration (beside the model or ``--calibration``) also its LLR and the decision."""
    if not 0 < args.p_target < 1:
        raise SpeakerNetError(f"--p_target {args.p_target}: a prior, strictly between 0 and 1")
    calibration = None if args.calibration == "none" else args.calibration or AUTO
    embedder = embedder_for(args, calibration=calibration)
    if embedder.calibration is None:
        print(f"score {embedder.score(*args.files):.6f}")
        return
    result = embedder.verify(*args.files, p_target=args.p_target)
    print(f"score {result.score:.6f}")
    print(f"llr {result.llr:.6f}")
    print(f"{result.decision} (p_target {result.p_target:g}: accept when llr > {result.threshold:.4f}; "
          f"calibration {embedder.calibration.source})")


# ----------------------------------------------------------------------------------------------------------------
# calibrate
# ----------------------------------------------------------------------------------------------------------------

def add_calibrate_command(commands) -> None:
    calibrate = commands.add_parser("calibrate", help="fit score -> LLR on a labelled trial list, saved beside M")
    add_model_arguments(calibrate)
    calibrate.add_argument("--test_list", required=True, help="labelled trial list '<label> <enroll> <test>'")
    calibrate.add_argument("--test_path", default="", help="folder the trial list's paths are relative to")
    calibrate.add_argument("--out", default="", help="calibration file to write (default: M.calibration.json)")
    calibrate.add_argument("--score_norm", choices=["none", "asnorm"], default="none",
                           help="asnorm: AS-norm against --train_list speakers, as --eval does")
    calibrate.add_argument("--train_list", default="", help="asnorm: cohort list '<speaker> <path.wav>'")
    calibrate.add_argument("--train_path", default="", help="asnorm: folder of the cohort list's paths")
    calibrate.add_argument("--cohort_size", type=at_least(2), default=200,
                           help="asnorm: top cohort scores per file (2 or more: their standard deviation is used)")
    calibrate.add_argument("--cohort_utterances", type=at_least(1), default=3,
                           help="asnorm: files per cohort speaker")
    calibrate.add_argument("--dcf_p_target", type=float, default=0.05, help="actDCF target prior (and 0.01)")
    calibrate.add_argument("--nDataLoaderThread", type=int, default=2, help="loader worker processes")
    calibrate.add_argument("--quality", nargs="*", default=[], choices=sorted(calibrations.QUALITY_FEATURES),
                           help="quality measures the calibration also uses (duration: the enrolment and test "
                                "durations, log seconds; applied wherever the calibration is)")


def calibration_scores(args, embedder):
    """The ``--eval`` scores of the labelled ``--test_list`` with this embedder's network and options."""
    cohort = asnorm_cohort(EvalSpec(score_norm=args.score_norm, cohort_utterances=args.cohort_utterances),
                           DataSpec(train_list=args.train_list, train_path=args.train_path))
    plan = read_plan([args.test_list], args.test_path, "calibration", cohort=cohort)
    options = EvalOptions(eval_frames=args.eval_frames, num_workers=args.nDataLoaderThread, scoring=args.scoring,
                          score_norm=args.score_norm, cohort_size=args.cohort_size, pipeline=embedder.pipeline)
    outcome = evaluate(embedder.network, embedder.test_normalize, plan, args.test_path, options, embedder.device)
    return outcome.tests[0]


def run_calibrate(args) -> None:
    """Score the list as ``--eval`` does, fit llr = scale * score + offset, print the metrics before and after,
    and write the calibration (atomically) beside the model or to ``--out``."""
    if not 0 < args.dcf_p_target < 1:
        raise SpeakerNetError(f"--dcf_p_target {args.dcf_p_target}: a prior, strictly between 0 and 1")
    out = args.out or calibrations.default_path(args.initial_model)
    embedder = embedder_for(args, calibration=None)
    weights = embedder.weights_sha256()
    result = calibration_scores(args, embedder)
    labels = result.trial_list.labels
    options = calibrations.scoring_options(args.eval_frames, args.scoring, args.score_norm, embedder.test_normalize,
                                           embedder.pipeline.scale, embedder.pipeline.pad,
                                           cohort_size=args.cohort_size, cohort_utterances=args.cohort_utterances,
                                           cohort_list=args.train_list)
    p_targets = tuple(dict.fromkeys((args.dcf_p_target, 0.01)))
    quality = calibrations.trial_quality(args.quality, result.trial_list.trials, args.test_path)
    fitted = calibrations.calibrate(result.scores, labels, weights, options, args.test_list, args.initial_model,
                                    p_targets, quality_measures=args.quality, quality=quality)
    print(f"{args.test_list}: {fitted.trials['target']} target and {fitted.trials['non_target']} non-target "
          f"trials, {args.scoring} scoring{', AS-norm' if args.score_norm == 'asnorm' else ''}, "
          f"eval_frames {args.eval_frames}")
    print(result.metrics.summary())
    print(f"before (raw scores as LLRs): {calibrations.describe(fitted.metrics['before'])}")
    print(f"after ({fitted.formula()}): {calibrations.describe(fitted.metrics['after'])}")
    fitted.save(out)
    print(f"calibration written to {out}")


def run_export(args) -> None:
    embedder = embedder_for(args)
    info = export_model(embedder.network, embedder.config, args.out, args.format, embedder.test_normalize)
    print(f"{args.format} export of {args.initial_model} (embedding dim {info['embedding_dim']}, test_normalize "
          f"{info['test_normalize']}, input float32 (batch, samples) in [-1, 1] at 16 kHz) written to {args.out}")


def chosen_epochs(args, model_dir: str) -> tuple[list[str], str]:
    """The checkpoint paths ``--last`` or ``--epochs`` names (oldest first) and the default output name."""
    found = dict(checkpoints.epoch_checkpoints(model_dir))
    if args.last is not None:
        if args.last < 1:
            raise SpeakerNetError(f"--last {args.last}: must be at least 1")
        if len(found) < args.last:
            held = ", ".join(map(str, found)) or "none"
            raise SpeakerNetError(f"{model_dir}: --last {args.last} needs {args.last} epoch checkpoints, this run "
                                  f"holds {len(found)} (epochs: {held})")
        epochs = sorted(found)[-args.last:]
        return [found[epoch] for epoch in epochs], f"average_last{args.last}.model"
    try:
        epochs = [int(part) for part in args.epochs.split(",")]
    except ValueError:
        raise SpeakerNetError(f"--epochs {args.epochs!r}: expected epoch numbers separated by commas, "
                              f"e.g. 8,9,10") from None
    if len(set(epochs)) != len(epochs):
        raise SpeakerNetError(f"--epochs {args.epochs}: an epoch is named twice")
    epochs = sorted(epochs)
    missing = [checkpoints.checkpoint_path(model_dir, epoch) for epoch in epochs if epoch not in found]
    if missing:
        raise SpeakerNetError(f"{missing[0]}: epoch checkpoint not found (--epochs {args.epochs}; this run holds "
                              f"epochs {', '.join(map(str, found)) or 'none'})")
    return [found[epoch] for epoch in epochs], "average_" + "_".join(map(str, epochs)) + ".model"


def run_average(args) -> None:
    model_dir = os.path.join(args.save_path, "model")
    paths, name = chosen_epochs(args, model_dir)
    out = args.out or os.path.join(model_dir, name)
    checkpoints.save_averaged(out, checkpoints.average_checkpoints(paths, args.trust_checkpoint))
    print(f"{out}: the mean of {len(paths)} checkpoint(s): {', '.join(os.path.basename(path) for path in paths)}")


# ----------------------------------------------------------------------------------------------------------------
# enroll, speakers, identify
# ----------------------------------------------------------------------------------------------------------------

def add_speaker_commands(commands) -> None:
    enroll = commands.add_parser("enroll", help="add speakers' files to a speaker database (SQLite)")
    add_model_arguments(enroll, scoring=False)
    add_embedding_arguments(enroll)
    enroll.add_argument("--db", required=True, help="the speaker database (made if absent)")
    enroll.add_argument("--speaker", default="", help="the name the files are enrolled under")
    enroll.add_argument("files", nargs="*", help="audio files of --speaker")
    enroll.add_argument("--list", default="", help="a file of '<speaker> <file>' lines (paths relative to --root)")
    enroll.add_argument("--root", default="", help="folder the --list paths are relative to")
    enroll.add_argument("--cohort", action="store_true",
                        help="store the --list speakers as the AS-norm cohort (replacing it), not as enrolled "
                             "speakers")
    listing = commands.add_parser("speakers", help="list, remove or rename the speakers of a database")
    listing.add_argument("--db", required=True, help="the speaker database")
    listing.add_argument("--remove", default="", help="remove this speaker and its files")
    listing.add_argument("--rename", nargs=2, metavar=("OLD", "NEW"), help="rename a speaker")
    identify = commands.add_parser("identify", help="who speaks in each file: the top enrolled speakers, or "
                                                    "'unknown' below the threshold")
    add_model_arguments(identify, scoring=False)
    add_embedding_arguments(identify)
    identify.add_argument("--db", required=True, help="the speaker database (inference.py enroll)")
    identify.add_argument("files", nargs="*", help="audio files to identify")
    identify.add_argument("--top_k", type=at_least(1), default=3, help="candidates printed per file")
    identify.add_argument("--threshold", type=float, default=None,
                          help="score at or below which the answer is 'unknown' (stored in the database)")
    identify.add_argument("--far", type=float, default=None,
                          help="set the threshold at this false-alarm rate on the non-target trials of "
                               "--test_list (stored in the database), e.g. 0.01")
    identify.add_argument("--test_list", default="", help="--far: labelled trials '<label> <enroll> <test>'")
    identify.add_argument("--test_path", default="", help="--far: folder of the trial list's paths")
    identify.add_argument("--score_norm", choices=["none", "asnorm"], default="none",
                          help="asnorm: AS-norm against the database's cohort (enroll --cohort)")
    identify.add_argument("--cohort_size", type=at_least(2), default=200, help="asnorm: top cohort scores used")
    identify.add_argument("--eval", action="store_true",
                          help="measure identification on --list '<speaker> <file>' lines: closed-set top-1 over "
                               "enrolled speakers' files, open-set DIR at --far (default 0.01) false alarms with "
                               "the other speakers' files as impostors")
    identify.add_argument("--list", default="", help="--eval: the labelled files")
    identify.add_argument("--root", default="", help="folder the --list paths are relative to")
    identify.add_argument("--float16", action="store_true", help="search a float16 speaker matrix (half the memory)")


def add_embedding_arguments(command: argparse.ArgumentParser) -> None:
    """How files are embedded for a speaker database (identification scores by cosine, as --scoring cosine)."""
    command.add_argument("--eval_frames", type=int, default=0,
                         help="0: whole files (default); N: the original's 10 crops of N frames")
    command.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")


def speaker_db(args, create: bool = False, calibrated: bool = True):
    """The database of ``--db`` with the model of ``--initial_model``; ``calibrated``: with the calibration beside
    the model, whose LLRs identification prints when it was made for its scores (checked where used)."""
    overrides = {key: getattr(args, key) for key in MODEL_FIELDS}
    embedder = load_embedder(args.initial_model, device=args.device, trust=args.trust_checkpoint,
                             eval_frames=args.eval_frames, scoring="cosine", calibration=None, **overrides)
    calibration = calibrations.resolve(args.initial_model, None) if calibrated else None
    dtype = torch.float16 if getattr(args, "float16", False) else torch.float32
    return SpeakerDB(args.db, embedder, create=create, dtype=dtype, calibration=calibration)


def labelled_files(list_path: str, root: str) -> list[tuple[str, str]]:
    """``(speaker, path)`` of every '<speaker> <file>' line (the training list's format and reader)."""
    listed = read_train_list(list_path, root)
    return [(listed.speakers[label], path) for path, label in zip(listed.files, listed.labels.tolist())]


def grouped(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for speaker, path in pairs:
        groups.setdefault(speaker, []).append(path)
    return groups


def run_enroll(args) -> None:
    if args.list and (args.files or args.speaker):
        raise SpeakerNetError("enroll: give --speaker NAME with files, or --list FILE, not both")
    if args.list:
        groups = grouped(labelled_files(args.list, args.root))
    elif args.cohort:
        raise SpeakerNetError("enroll --cohort: give the cohort as --list '<speaker> <file>' lines")
    elif not args.speaker or not args.files:
        raise SpeakerNetError("enroll: give --speaker NAME and its audio files (or --list FILE)")
    else:
        groups = {args.speaker: list(args.files)}
    with speaker_db(args, create=True, calibrated=False) as db:
        if args.cohort:
            print(f"{args.db}: cohort of {db.set_cohort(groups)} speakers stored")
            return
        counts = db.enroll_many(groups)
        for speaker, count in counts.items():
            print(f"{speaker}: {count} file(s) enrolled in {args.db}")


def run_speakers(args) -> None:
    with SpeakerDB(args.db) as db:
        if args.remove:
            db.remove(args.remove)
            print(f"{args.remove}: removed from {args.db}")
        if args.rename:
            db.rename(*args.rename)
            print(f"{args.rename[0]}: renamed {args.rename[1]} in {args.db}")
        speakers = db.speakers()
        for name, files in speakers:
            print(f"{name}\t{files} file(s)")
        threshold = db.threshold()
        print(f"{len(speakers)} speaker(s); threshold {threshold.describe() if threshold else 'none'}")


def run_identify(args) -> None:
    if args.far is not None and not args.test_list and not args.eval:
        raise SpeakerNetError("identify --far: give the labelled trials to set the threshold on (--test_list)")
    if args.eval and not args.list:
        raise SpeakerNetError("identify --eval: give the labelled files (--list '<speaker> <file>' lines)")
    if not args.eval and not args.files and args.far is None and args.threshold is None:
        raise SpeakerNetError("identify: no audio given")
    with speaker_db(args) as db:
        if args.eval:
            print(db.evaluate(labelled_files(args.list, args.root), args.far or 0.01, args.score_norm,
                              args.cohort_size).summary())
            return
        if args.far is not None:
            trials = read_trial_list(args.test_list)
            if any(trial.label is None for trial in trials):
                raise SpeakerNetError(f"{args.test_list}: identify --far needs labelled trials")
            root = args.test_path
            threshold = db.threshold_from_trials([os.path.join(root, t.enroll) for t in trials],
                                                 [os.path.join(root, t.test) for t in trials],
                                                 [t.label for t in trials], args.far, args.test_list,
                                                 args.score_norm, args.cohort_size)
            print(f"threshold {threshold.describe()}, stored in {args.db}")
        elif args.threshold is not None:
            db.set_threshold(Threshold(args.threshold, score_norm=args.score_norm,
                                       **db.cohort_record(args.score_norm, args.cohort_size)))
            print(f"threshold {args.threshold:.4f}, stored in {args.db}")
        if not args.files:
            return
        for answer in db.identify(list(args.files), args.top_k, score_norm=args.score_norm,
                                  cohort_size=args.cohort_size):
            limit = "no threshold" if answer.threshold is None else f"threshold {answer.threshold:.4f}"
            print(f"{answer.file}: {answer.speaker} ({limit})")
            for rank, candidate in enumerate(answer.candidates, start=1):
                llr = "" if candidate.llr is None else f"  llr {candidate.llr:.4f}"
                print(f"  {rank}. {candidate.speaker}  score {candidate.score:.6f}{llr}")


# ----------------------------------------------------------------------------------------------------------------
# import
# ----------------------------------------------------------------------------------------------------------------

def add_import_command(commands) -> None:
    imported = commands.add_parser("import", help="another toolkit's published checkpoint as a SpeakerNet checkpoint")
    imported.add_argument("--from", dest="toolkit", required=True, choices=sorted(importing.TOOLKITS),
                          help="the toolkit the checkpoint comes from")
    imported.add_argument("file", help="its checkpoint (WeSpeaker: avg_model.pt; pyannote: pytorch_model.bin)")
    imported.add_argument("--config", default=None,
                          help="its config (WeSpeaker: config.yaml), read as data; checked against the weights")
    imported.add_argument("--model-id", dest="model_id", default=None,
                          help="3D-Speaker: the model id as published (iic/speech_campplus_sv_zh-cn_16k-common, ...) "
                               "or the network's name; checked against the weights")
    imported.add_argument("--out", required=True, help="the SpeakerNet checkpoint to write (e.g. M.model)")


def run_import(args) -> None:
    if args.model_id is not None and (args.toolkit != "3dspeaker" or args.config is not None):
        raise SpeakerNetError("--model-id names a 3D-Speaker model (--from 3dspeaker), instead of --config"
                              if args.toolkit == "3dspeaker" else
                              f"--model-id: a {args.toolkit} checkpoint is described by --config, not a model id")
    config = args.model_id if args.model_id is not None else args.config
    report = importing.import_checkpoint(args.toolkit, args.file, args.out, config)
    for line in report.lines(args.toolkit, args.file):
        print(line)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"embed": run_embed, "verify": run_verify, "calibrate": run_calibrate, "export": run_export,
                "average": run_average, "enroll": run_enroll, "speakers": run_speakers, "identify": run_identify,
                "import": run_import}
    return exit_status(commands[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
