#!/usr/bin/env bash
# VoxCeleb recipe: from the download to a table of EER, minDCF and Cllr, in nine resumable stages.
#
#   bash recipes/voxceleb/run.sh --data DIR --exp EXP [--config FILE] [--stage N] [--stop_stage M] [options]
#                                [-- extra trainSpeakerNet.py flags, given to every training and fine-tuning call]
#
# DIR holds (or stages 1-2 make) VoxCeleb's layout: voxceleb2/ (training audio), voxceleb1/ (test audio),
# train_list.txt, and the trial lists under the VoxCeleb site's names: veri_test2.txt, list_test_all2.txt,
# list_test_hard2.txt (those present are scored; training reports the first).
#
#   1 download   VoxCeleb (--voxceleb_url BASE or --voxceleb_list FILE, --user, --password; or the environment
#                variables VOXCELEB_URL, VOXCELEB_LIST, VOXCELEB_USER, VOXCELEB_PASSWORD), MUSAN and the RIRs
#   2 prepare    unpack, convert m4a to wav (--no_convert: keep m4a), write train_list.txt, cut MUSAN, unpack RIRs
#   3 train      trainSpeakerNet.py --config FILE into EXP/train (it resumes itself)
#   4 average    the last --average N (default 10) epoch checkpoints -> EXP/average.model
#   5 lmft       large-margin fine-tuning from EXP/average.model (configs/lmft_*.yaml for the config's loss) into
#                EXP/lmft; its last --lm_average N (default 3) checkpoints -> EXP/lmft_average.model
#   6 extract    each model (EXP/average.model, EXP/lmft_average.model) on every list at once: embeddings and cosine
#                scores in EXP/extract/{plain,lm}
#   7 score      the final model (the fine-tuned one when there is one) with AS-norm against the training speakers
#                -> EXP/score/asnorm
#   8 calibrate  fit score -> LLR on trials among --calib_speakers training speakers (none in a test list), then
#                score the lists with it -> EXP/calibrate; the same with the trial durations (--quality duration)
#                -> EXP/calibrate_quality
#   9 report     EXP/results.md
#  10 identify   only with --identify: open-set identification with the final model on the test audio of the
#                lists (scripts/identification_lists.py: every second speaker an impostor, the others enrolled
#                with their first session) -> EXP/identify/result.txt (closed-set top-1, DIR at 1 % false alarms)
#
# Options: --average N (10), --lm_average N (3): the epochs averaged; --calib_speakers N (200), --calib_trials N
# (20000); --no_convert: stage 2 keeps the m4a files and lists them (the loader decodes them with PyAV);
# --no_augment: no MUSAN/RIRs in stages 1-2; --identify: also run stage 10; --voxceleb_url, --voxceleb_list, --user, --password
# (stage 1; the password reaches dataprep.py through VOXCELEB_PASSWORD, not its command line).
#
# A stage that ends writes EXP/.done/stage_N; a later run skips it (delete the file to run it again). A stage that
# runs clears the later stages' files (their inputs change). A stage whose inputs are missing stops with one
# "error:" line naming them and the stage that makes them (exit 2). Before the first stage runs, the options are
# checked against what the stages will do (e.g. --average against the epochs the training saves, read from the
# config and the flags after --, parsed as trainSpeakerNet.py parses them): one that cannot work stops the run at
# once with an "error:" line naming it (exit 2).
# Augmentation in training: add "-- --augment --musan_path DIR/musan_split --rir_path DIR/RIRS_NOISES/simulated_rirs".
# PYTHON (default: python) is the interpreter.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
PYTHON="${PYTHON:-python}"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

data="" exp="" config="$repo/configs/mp_balance.yaml" stage=1 stop_stage="" average=10 lm_average=3 convert=1
augment=1 calib_speakers=200 calib_trials=20000
voxceleb_url="${VOXCELEB_URL:-}" voxceleb_list="${VOXCELEB_LIST:-}" user="${VOXCELEB_USER:-}"
extra=()
names=("" download prepare train average lmft extract score calibrate report identify)
last_stage=9     # 10 with --identify

die() { echo "error: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --) shift; extra=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    --no_convert) convert=0; shift ;;
    --no_augment) augment=0; shift ;;
    --identify) last_stage=10; shift ;;
    --data|--exp|--config|--stage|--stop_stage|--average|--lm_average|--calib_speakers|--calib_trials|\
    --voxceleb_url|--voxceleb_list|--user|--password)
      [[ $# -ge 2 ]] || die "$1 needs a value"
      case "$1" in
        --data) data="$2" ;; --exp) exp="$2" ;; --config) config="$2" ;; --stage) stage="$2" ;;
        --stop_stage) stop_stage="$2" ;; --average) average="$2" ;; --lm_average) lm_average="$2" ;;
        --calib_speakers) calib_speakers="$2" ;; --calib_trials) calib_trials="$2" ;;
        --voxceleb_url) voxceleb_url="$2" ;; --voxceleb_list) voxceleb_list="$2" ;; --user) user="$2" ;;
        --password) export VOXCELEB_PASSWORD="$2" ;;
      esac
      shift 2 ;;
    *) die "unknown option $1 (see --help; trainSpeakerNet.py flags go after --)" ;;
  esac
done

stop_stage="${stop_stage:-$last_stage}"     # default: the last stage (10 with --identify)
[[ -n "$data" ]] || die "--data DIR is required (the VoxCeleb folder)"
[[ -n "$exp" ]] || die "--exp DIR is required (the experiment folder)"
for value in "$stage" "$stop_stage" "$average" "$lm_average" "$calib_speakers" "$calib_trials"; do
  [[ "$value" =~ ^[0-9]+$ ]] || die "expected a whole number, got '$value'"
done
(( stage >= 1 )) || die "--stage $stage: stages are 1-$last_stage"
[[ -f "$config" ]] || die "$config: config file not found (--config)"
data="$(realpath -m -- "$data")" exp="$(realpath -m -- "$exp")" config="$(realpath -m -- "$config")"
train_list="$data/train_list.txt" train_path="$data/voxceleb2" test_path="$data/voxceleb1"

# The trial lists present, under the VoxCeleb site's names; the first is the one training reports.
lists=()
for name in veri_test2.txt list_test_all2.txt list_test_hard2.txt; do
  [[ -f "$data/$name" ]] && lists+=("$data/$name")
done
lists_csv="$(IFS=,; echo "${lists[*]-}")"

# ---------------------------------------------------------------------------------------------------------------
# Inputs: each check names the missing file and the stage that makes it
# ---------------------------------------------------------------------------------------------------------------
need() {  # need STAGE PATH MAKER_STAGE [what]
  [[ -e "$2" ]] || die "stage $1 (${names[$1]}) needs $2${4:+ ($4)}, made by stage $3 (${names[$3]})"
}
need_lists() {
  [[ ${#lists[@]} -gt 0 ]] || die "stage $1 (${names[$1]}) needs a trial list in $data (veri_test2.txt," \
    "list_test_all2.txt or list_test_hard2.txt), made by stage 1 (download)"
}
final_model() {
  if [[ -f "$exp/lmft_average.model" ]]; then echo "$exp/lmft_average.model"; else echo "$exp/average.model"; fi
}

inputs_1() {
  [[ -n "$voxceleb_url" || -n "$voxceleb_list" ]] || die "stage 1 (download) needs the VoxCeleb address:" \
    "--voxceleb_url BASE or --voxceleb_list FILE (or VOXCELEB_URL / VOXCELEB_LIST), from registering at the" \
    "VoxCeleb site; or put the data in $data and start at --stage 2"
}
inputs_2() { need 2 "$data" 1; }
inputs_3() { need 3 "$train_list" 2; need 3 "$train_path" 2; need 3 "$test_path" 2; need_lists 3; }
inputs_4() { need 4 "$exp/train/model" 3 "the training checkpoints"; }
inputs_5() {
  need 5 "$exp/average.model" 4; need 5 "$train_list" 2; need 5 "$test_path" 2; need_lists 5
  lm_words="$("$PYTHON" -m spknet.recipe lm-flags --config "$config" -- "${extra[@]+"${extra[@]}"}")" || exit 2
}
inputs_6() { need 6 "$exp/average.model" 4; need 6 "$test_path" 2; need_lists 6; }
inputs_7() { need 7 "$(final_model)" 4; need 7 "$train_list" 2; need 7 "$test_path" 2; need_lists 7; }
inputs_8() { need 8 "$(final_model)" 4; need 8 "$train_list" 2; need 8 "$test_path" 2; need_lists 8; }
inputs_9() { need 9 "$exp/extract/plain/result/metrics.json" 6 "the evaluation records"; }
inputs_10() { need 10 "$(final_model)" 4; need 10 "$test_path" 2; need_lists 10; }

# ---------------------------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------------------------
trainer() { "$PYTHON" "$repo/trainSpeakerNet.py" "$@"; }

eval_words=""    # the evaluation flags, derived once before the stages run (below)
evaluate() {  # evaluate FOLDER MODEL [flags]: every list at once; --eval writes FOLDER/result/metrics.json
  local folder="$1" model="$2" flags
  shift 2
  mkdir -p "$folder"
  mapfile -t flags <<< "$eval_words"
  trainer --eval --initial_model "$model" --test_list "$lists_csv" --test_path "$test_path" --scoring cosine \
    --save_path "$folder" --save_scores "$folder/scores.txt" "${flags[@]}" "$@" 2>&1 | tee "$folder/eval.log"
}

stage_1() {
  local args=(--save_path "$data" --download)
  [[ -n "$voxceleb_url" ]] && args+=(--voxceleb_url "$voxceleb_url")
  [[ -n "$voxceleb_list" ]] && args+=(--voxceleb_list "$voxceleb_list")
  [[ -n "$user" ]] && args+=(--user "$user")
  (( augment )) && args+=(--augment)
  mkdir -p "$data"
  "$PYTHON" "$repo/dataprep.py" "${args[@]}"
}

stage_2() {
  local args=(--save_path "$data" --extract --make_list)
  (( convert )) && args+=(--convert)
  (( augment )) && args+=(--augment)
  "$PYTHON" "$repo/dataprep.py" "${args[@]}"
}

stage_3() {
  trainer --config "$config" --train_list "$train_list" --train_path "$train_path" --test_list "${lists[0]}" \
    --test_path "$test_path" --save_path "$exp/train" "${extra[@]+"${extra[@]}"}"
  "$PYTHON" -m spknet.recipe note --out "$exp/train/recipe.json" --config "$config" -- "${extra[@]+"${extra[@]}"}"
}

stage_4() {
  "$PYTHON" "$repo/inference.py" average --save_path "$exp/train" --last "$average" --out "$exp/average.model"
}

stage_5() {
  local lm
  mapfile -t lm <<< "$lm_words"
  trainer --config "${lm[0]}" "${lm[@]:1}" --initial_model "$exp/average.model" --train_list "$train_list" \
    --train_path "$train_path" --test_list "${lists[0]}" --test_path "$test_path" --save_path "$exp/lmft" \
    "${extra[@]+"${extra[@]}"}"
  "$PYTHON" -m spknet.recipe note --out "$exp/lmft/recipe.json" --config "${lm[0]}" -- "${lm[@]:1}" \
    "${extra[@]+"${extra[@]}"}"
  "$PYTHON" "$repo/inference.py" average --save_path "$exp/lmft" --last "$lm_average" \
    --out "$exp/lmft_average.model"
}

stage_6() {
  evaluate "$exp/extract/plain" "$exp/average.model" --save_embeddings "$exp/extract/plain/embeddings.npz"
  if [[ -f "$exp/lmft_average.model" ]]; then
    evaluate "$exp/extract/lm" "$exp/lmft_average.model" --save_embeddings "$exp/extract/lm/embeddings.npz"
  fi
}

stage_7() {
  evaluate "$exp/score/asnorm" "$(final_model)" --score_norm asnorm --train_list "$train_list" \
    --train_path "$train_path"
}

stage_8() {
  local model flags folder="$exp/calibrate"
  model="$(final_model)"
  mkdir -p "$folder"
  "$PYTHON" -m spknet.recipe dev-trials --train_list "$train_list" --out "$folder/dev_trials.txt" \
    --speakers "$calib_speakers" --trials "$calib_trials"
  flags="$("$PYTHON" -m spknet.recipe eval-flags --calibrate --config "$config" -- "${extra[@]+"${extra[@]}"}")"
  mapfile -t flags <<< "$flags"
  "$PYTHON" "$repo/inference.py" calibrate --initial_model "$model" --test_list "$folder/dev_trials.txt" \
    --test_path "$train_path" --scoring cosine --out "$folder/final.calibration.json" "${flags[@]}"
  evaluate "$folder" "$model" --calibration "$folder/final.calibration.json"
  # the same fit with the trial durations as quality measures (WeSpeaker's QMF), scored beside it
  "$PYTHON" "$repo/inference.py" calibrate --initial_model "$model" --test_list "$folder/dev_trials.txt" \
    --test_path "$train_path" --scoring cosine --quality duration --out "$folder/quality.calibration.json" \
    "${flags[@]}"
  evaluate "$exp/calibrate_quality" "$model" --calibration "$folder/quality.calibration.json"
}

stage_9() {
  "$PYTHON" -m spknet.recipe report --exp "$exp"
  cat "$exp/results.md"
}

stage_10() {
  local model folder="$exp/identify"
  model="$(final_model)"
  rm -rf "$folder"          # a database of another model would be refused: the stage starts from an empty one
  "$PYTHON" "$repo/scripts/identification_lists.py" --test_list "$lists_csv" --out "$folder"
  "$PYTHON" "$repo/inference.py" enroll --initial_model "$model" --db "$folder/speakers.db" \
    --list "$folder/enrol.txt" --root "$test_path" > "$folder/enrol.log"
  "$PYTHON" "$repo/inference.py" identify --eval --initial_model "$model" --db "$folder/speakers.db" \
    --list "$folder/test.txt" --root "$test_path" --far 0.01 | tee "$folder/result.txt"
}

# ---------------------------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------------------------
mark_done() {  # atomically: a crash leaves the marker or none
  local temporary
  temporary="$(mktemp "$exp/.done/.stage_$1.XXXXXX")"
  date -u '+%Y-%m-%d %H:%M:%S UTC' > "$temporary"
  chmod a+r "$temporary"
  mv -f "$temporary" "$exp/.done/stage_$1"
}

# The stages that will run: from the first one in range not done (a stage that runs clears the later markers).
end=$(( stop_stage < last_stage ? stop_stage : last_stage )) first=$(( end + 1 ))
for ((n = stage; n <= end; n++)); do
  [[ -f "$exp/.done/stage_$n" ]] || { first=$n; break; }
done
for checked in 4 5 8; do   # the stages whose options depend on others' (epochs averaged, calibration trials)
  if (( first <= checked && checked <= end )); then
    "$PYTHON" -m spknet.recipe check --config "$config" --exp "$exp" --first "$first" --last "$end" \
      --average "$average" --lm_average "$lm_average" --calib_speakers "$calib_speakers" \
      --calib_trials "$calib_trials" -- "${extra[@]+"${extra[@]}"}" || exit 2
    break
  fi
done

if (( first <= 8 && 6 <= end )); then   # stages 6-8 evaluate with the same flags: derive them once
  eval_words="$("$PYTHON" -m spknet.recipe eval-flags --config "$config" -- "${extra[@]+"${extra[@]}"}")" || exit 2
fi

mkdir -p "$exp/.done" "$exp/logs"
for ((n = stage; n <= stop_stage && n <= last_stage; n++)); do
  if [[ -f "$exp/.done/stage_$n" ]]; then
    echo "stage $n (${names[$n]}): done $(cat "$exp/.done/stage_$n"), skipped (remove $exp/.done/stage_$n to" \
      "run it again)"
    continue
  fi
  "inputs_$n"
  for ((later = n + 1; later <= last_stage; later++)); do   # their inputs are about to change
    rm -f "$exp/.done/stage_$later"
  done
  echo "== stage $n (${names[$n]}) $(date -u '+%H:%M:%S'), log: $exp/logs/stage_$n.log"
  "stage_$n" 2>&1 | tee "$exp/logs/stage_$n.log"
  mark_done "$n"
done
