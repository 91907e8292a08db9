#!/usr/bin/env bash
# Train every loss with the same model, data and budget, then print one table row per loss.
#
#   scripts/sweep_losses.sh CORPUS_DIR [EPOCHS]
#
# CORPUS_DIR holds train_list.txt, veri_test.txt and wav/ (the layout of synthetic_corpus.py / dataprep.py).
# EPOCHS defaults to 5. Each loss trains in its own run folder $SWEEP_DIR/<loss> (trainSpeakerNet.py
# --save_path), with its output in <loss>/train.log, its wall time in <loss>/wall_seconds.txt and its exit code in
# <loss>/exit_code.txt. The table (loss, status, final VEER and minDCF, best epoch by VEER, wall time) is parsed
# from each run's result/scores.txt by scripts/summarise_runs.py and also saved as $SWEEP_DIR/summary.txt.
# A failed run is shown as failed and the sweep goes on with the other losses; the script then exits 1. A run whose
# folder, model/ or result/ is something other than a folder is not started: it fails with exit code 2 and a
# one-line message naming that path (on stderr and in its train.log).
# trainSpeakerNet.py resumes from the checkpoints already in a run folder: use a new SWEEP_DIR for a fresh sweep.
#
# Environment (defaults in brackets):
#   LOSSES          losses to train, space separated [every name of spknet.plugins.choices("loss")]
#   SWEEP_DIR       where the run folders go [exps/sweep]
#   PYTHON          interpreter [python]
#   MODEL, ENCODER  network and pooling [ResNetSE34L, SAP]
#   BATCH_SIZE      speaker groups per batch [32]
#   MAX_FRAMES      training crop in frames, also the evaluation crop [200]
#   OPTIMIZER, LR   [adam, 0.001]
#   SEED            [10]
#   LOADER_THREADS  --nDataLoaderThread [5, as trainSpeakerNet.py]; 0 loads in the training process
#   DEVICE          --device (cuda or cpu) [trainSpeakerNet.py's choice]
#   EXTRA_ARGS      more trainSpeakerNet.py flags, word-split, after the others (so they win)
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}
die() { echo "sweep_losses.sh: $*" >&2; exit 2; }

[[ $# -ge 1 && $# -le 2 ]] || usage
[[ $1 == -h || $1 == --help ]] && usage
CORPUS_DIR=$1
EPOCHS=${2:-5}
PYTHON=${PYTHON:-python}
SWEEP_DIR=${SWEEP_DIR:-exps/sweep}
MODEL=${MODEL:-ResNetSE34L}
ENCODER=${ENCODER:-SAP}
BATCH_SIZE=${BATCH_SIZE:-32}
MAX_FRAMES=${MAX_FRAMES:-200}
OPTIMIZER=${OPTIMIZER:-adam}
LR=${LR:-0.001}
SEED=${SEED:-10}
LOADER_THREADS=${LOADER_THREADS:-5}
DEVICE=${DEVICE:-}
EXTRA_ARGS=${EXTRA_ARGS:-}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")

[[ $EPOCHS =~ ^[1-9][0-9]*$ ]] || die "EPOCHS must be a positive integer, got '$EPOCHS'"
for name in BATCH_SIZE MAX_FRAMES SEED LOADER_THREADS; do
    [[ ${!name} =~ ^[0-9]+$ ]] || die "$name must be a non-negative integer, got '${!name}'"
done
for path in train_list.txt veri_test.txt wav; do
    [[ -e $CORPUS_DIR/$path ]] || die "$CORPUS_DIR/$path not found (CORPUS_DIR needs train_list.txt, veri_test.txt, wav/)"
done
command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON: not found"

# Every loss the project knows, to check LOSSES against (and the default list).
available=$(cd "$REPO" && "$PYTHON" -c 'from spknet import plugins; print(" ".join(plugins.choices("loss")))') \
    || die "could not list the losses with $PYTHON"
read -r -a losses <<< "${LOSSES:-$available}"
(( ${#losses[@]} > 0 )) || die "LOSSES is empty"
for loss in "${losses[@]}"; do
    [[ " $available " == *" $loss "* ]] || die "unknown loss '$loss' in LOSSES; choices: $available"
done
read -r -a extra <<< "$EXTRA_ARGS"
device_args=()
[[ -n $DEVICE ]] && device_args=(--device "$DEVICE")

mkdir -p "$SWEEP_DIR"
trap 'echo "sweep_losses.sh: interrupted" >&2; exit 130' INT TERM

failed=()
index=0
for loss in "${losses[@]}"; do
    index=$((index + 1))
    run_dir=$SWEEP_DIR/$loss
    echo "==> [$index/${#losses[@]}] $loss: $EPOCHS epoch(s) -> $run_dir (log: $run_dir/train.log)" >&2
    # The run folder and its model/ and result/ must be folders (or absent): say which path is in the way
    # instead of letting trainSpeakerNet.py fail on it with a traceback.
    blocked=
    for path in "$run_dir" "$run_dir/model" "$run_dir/result"; do
        if [[ ( -e $path || -L $path ) && ! -d $path ]]; then blocked=$path; break; fi
    done
    if [[ -n $blocked ]]; then
        message="sweep_losses.sh: $blocked exists and is not a folder; the $loss run needs a folder there"
        echo "    $message" >&2
        if [[ $blocked != "$run_dir" ]]; then
            echo "$message" > "$run_dir/train.log"
            echo 2 > "$run_dir/exit_code.txt"
        fi
        failed+=("$loss")
        continue
    fi
    mkdir -p "$run_dir"
    command=("$PYTHON" "$REPO/trainSpeakerNet.py"
        --model "$MODEL" --encoder_type "$ENCODER" --trainfunc "$loss"
        --optimizer "$OPTIMIZER" --lr "$LR" --batch_size "$BATCH_SIZE" --max_frames "$MAX_FRAMES"
        --max_epoch "$EPOCHS" --test_interval 1 --seed "$SEED" --nDataLoaderThread "$LOADER_THREADS"
        --train_list "$CORPUS_DIR/train_list.txt" --test_list "$CORPUS_DIR/veri_test.txt"
        --train_path "$CORPUS_DIR/wav" --test_path "$CORPUS_DIR/wav"
        --save_path "$run_dir" "${device_args[@]}" "${extra[@]}")
    printf '%q ' "${command[@]}" > "$run_dir/command.txt"
    echo >> "$run_dir/command.txt"
    started=$(date +%s.%N)
    if PYTHONUNBUFFERED=1 "${command[@]}" > "$run_dir/train.log" 2>&1; then rc=0; else rc=$?; fi
    finished=$(date +%s.%N)
    awk -v a="$started" -v b="$finished" 'BEGIN { printf "%.1f\n", b - a }' > "$run_dir/wall_seconds.txt"
    echo "$rc" > "$run_dir/exit_code.txt"
    if (( rc != 0 )); then
        failed+=("$loss")
        echo "    $loss FAILED (exit $rc) after $(cat "$run_dir/wall_seconds.txt") s; end of its log:" >&2
        tail -n 5 "$run_dir/train.log" | tr '\r' '\n' | tail -n 5 | sed 's/^/    | /' >&2
    else
        echo "    done in $(cat "$run_dir/wall_seconds.txt") s" >&2
    fi
done

echo >&2
"$PYTHON" "$HERE/summarise_runs.py" "$SWEEP_DIR" "${losses[@]}" | tee "$SWEEP_DIR/summary.txt"
if (( ${#failed[@]} > 0 )); then
    echo "sweep_losses.sh: ${#failed[@]} of ${#losses[@]} run(s) failed: ${failed[*]}" >&2
    exit 1
fi
