#!/usr/bin/env bash
# Noisy-student training (ZIPA's Zipa-Cr-Ns recipe) as an experiment whose truth is known, in stages:
#
#   0  data: prepare.sh stages 0-1 (tokenizer, the embedded eSpeak NG corpus; skipped when complete)
#   1  split the training cuts: --labelled-fraction of them keep their transcripts, the others lose them
#        -> $ns_dir/labelled, $ns_dir/unlabelled            (local/split_labelled.py)
#   2  teacher: train on the labelled part alone, decode the test split
#   3  pseudo-label the unlabelled part with the teacher (clean audio, no augmentation); filters: empty
#      output, ZIPA's length rule (--length-ratio), --min-confidence; rejected cuts stay as unlabelled
#        -> $ns_dir/pseudo                                     (local/pseudo_label.py)
#   4  student: labelled + pseudo-labelled (mixed by size), rejected cuts with the consistency term alone
#      (--use-unsup-cr-ctc 1 --unsup-cr-ctc-loss-scale 0.5), augmented input; decode
#   5  the same student without the unsupervised consistency term (--use-unsup-cr-ctc 0: rejected cuts dropped)
#   6  the ceiling: the same cuts with their true transcripts (the whole training split); decode
#   7  the control (with --student-init teacher): the teacher trained on for the students' batches on its own
#      labelled cuts, so that a student's gain over it is the pseudo-labelled data's, not the extra compute
#   8  the table: test PER/PFER of the models and the compute of every stage
#
#   ./zipformer_crctc/noisy_student.sh                          # everything, sized for a 2-core CPU
#   ./zipformer_crctc/noisy_student.sh --stage 4 --stop-stage 4 # one stage (each resumes where it stopped)
#   ./zipformer_crctc/noisy_student.sh --model-size small --world-size 4 --use-bf16 1 --max-duration 600 \
#     --teacher-batches 40000 --student-batches 40000 --pseudo-nproc 4 --device auto   # a GPU node
#
# Every training stage trains a fixed number of batches (--teacher-batches, --student-batches) with the CPU
# demo's schedule scaled to it (Eden over 5/8 of the batches, CR-CTC from 9/16 of them, the last 20% cooling
# down), and prints its compute (batches, seconds of audio, wall time) into $ns_dir/compute.tsv.
# --student-init teacher (the default) starts the students, the ceiling and the control from the teacher's
# last weights, as one more round of training would on a cluster; --student-init scratch trains them from
# random weights (fair at equal compute only when --student-batches is large enough for the bigger data).
set -euo pipefail
cd "$(dirname "$0")/.."

stage=0
stop_stage=100
nj=2                          # CPU threads (and prepare.sh workers)
corpus=data/shar/embedded     # train/dev/test Shar
ns_dir=data/shar/noisy_student
exp_root=zipformer_crctc/exp-ns
labelled_fraction=0.333
split_seed=0
model_size=tiny
world_size=1
max_duration=30               # smaller batches, more updates for the same audio: what a 2-core CPU affords
use_bf16=0
teacher_batches=800
student_batches=400
student_init=teacher          # teacher: students (and ceiling, control) start from its weights; scratch: random
student_lr=""                 # the students' --base-lr; default 0.02 from the teacher (a learning rate below where
                              # its own schedule was before the cool-down: restarting at 0.045 undid the teacher's
                              # last gains, dev PER 42% -> 64%), --base-lr from scratch
base_lr=0.045
min_confidence=0.5            # not tuned here; stage 3 prints the PER of the kept and the rejected labels. (80 cuts
                              # labelled at 34.9% PER by the demo's checkpoint-450: 0.5 kept 32, at 23.5% PER;
                              # the 48 rejected were at 44.9%.)
length_ratio=0.85
pseudo_method=ctc-greedy-search
pseudo_nproc=1                # >1: torchrun with this many processes (one per GPU)
device=auto                   # pseudo-labelling: auto (GPU if any), cpu, cuda:N
unsup_scale=0.5               # --unsup-cr-ctc-loss-scale
pseudo_scale=1.0              # --pseudo-ctc-loss-scale
decoding_method=ctc-prefix-beam-search
blank_penalty=0.5
model_flags=""                # model overrides for train.py and decode.py, e.g. "--encoder-dim 192,256,384,512,384,256"
train_extra=""                # more train.py flags, e.g. "--num-workers 4"
python=${PYTHON:-python3}

. shared/parse_options.sh || exit 1

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (noisy_student.sh) $*"; }
mkdir -p "$ns_dir"
compute="$ns_dir/compute.tsv"
[ -f "$compute" ] || printf 'stage\tbatches\taudio_seconds\twall_seconds\n' > "$compute"
record() {  # name batches audio_seconds wall_seconds (the latest line per name wins in the table)
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$compute"
  log "compute of $1: $2 batches, $3 s of audio, $4 s wall"
}

train() {  # name batches [--base-lr LR] --train-shar ... [more flags]
  local name=$1 batches=$2 lr=$base_lr; shift 2
  if [ "${1:-}" = --base-lr ]; then lr=$2; shift 2; fi
  local exp="$exp_root/$name" t0; t0=$(date +%s)
  log "Training $name ($model_size) for $batches batches -> $exp"
  $python zipformer_crctc/train.py --model-size "$model_size" --exp-dir "$exp" --world-size "$world_size" \
    --dev-shar "$corpus/dev" --max-duration "$max_duration" --num-workers 1 --num-threads "$nj" \
    --use-bf16 "$use_bf16" --num-epochs 1000 --max-batches "$batches" --base-lr "$lr" \
    --lr-batches $((batches * 5 / 8)) --lr-epochs 4 --warmup-batches $((batches / 16)) --ref-duration 1 \
    --cooldown-fraction 0.2 --speed-perturb 0 --time-mask-ratio 1.0 --cr-start-batch $((batches * 9 / 16)) \
    --save-every-n $((batches / 8)) --keep-last-k 3 --average-period 10 --valid-interval 100000 \
    --log-interval 50 "$@" $model_flags $train_extra
  # the loop's last line: "Done: N batches, S s of audio, ..." (counted over resumes)
  local done_line; done_line=$(grep -h "Done:" "$exp"/log/log-train-0.txt* 2>/dev/null | tail -1)
  local nb; nb=$(sed -n 's/.*Done: \([0-9]*\) batches.*/\1/p' <<< "$done_line")
  local secs; secs=$(sed -n 's/.*batches, \([0-9.]*\) s of audio.*/\1/p' <<< "$done_line")
  record "train-$name" "${nb:-?}" "${secs:-?}" $(( $(date +%s) - t0 ))
}

decode() {  # name: the newest checkpoint, with the running average when an older one exists
  local name=$1 exp="$exp_root/$1" t0; t0=$(date +%s)
  local last; last=$(ls "$exp"/checkpoint-*.pt | sed 's/.*checkpoint-\([0-9]*\)\.pt/\1/' | sort -n | tail -1)
  local n; n=$(ls "$exp"/checkpoint-*.pt | wc -l)
  local avg_flags=(--avg 1 --use-averaged-model 0) suffix="iter-$last-avg-1"
  if [ "$n" -ge 2 ]; then avg_flags=(--avg 1 --use-averaged-model 1); suffix="$suffix-use-averaged-model"; fi
  log "Decoding $name: checkpoint-$last (${avg_flags[*]})"
  $python zipformer_crctc/decode.py --exp-dir "$exp" --iter "$last" "${avg_flags[@]}" --model-size "$model_size" \
    --test-shar test="$corpus/test" --decoding-method "$decoding_method" --blank-penalty "$blank_penalty" \
    --num-workers 1 --num-threads "$nj" $model_flags > /dev/null
  cp "$exp/$decoding_method/per-summary-$suffix.txt" "$exp/test-summary.txt"
  record "decode-$name" 0 "$(python_seconds "$corpus/test")" $(( $(date +%s) - t0 ))
}

python_seconds() {  # seconds of audio in a Shar folder (from its manifests)
  $python - "$1" <<'EOF'
import gzip, json, sys
from anyphone.data.shar import shar_fields
print(round(sum(json.loads(l)["duration"] for p in shar_fields(sys.argv[1])["cuts"] for l in gzip.open(p, "rt")
                if l.strip()), 1))
EOF
}

if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ]; then
  log "Stage 0: data"
  if [ "$corpus" = data/shar/embedded ]; then
    ./prepare.sh --stage 0 --stop-stage 1 --nj "$nj" --python "$python"
  fi
  for s in train dev test; do [ -d "$corpus/$s" ] || { echo "$0: $corpus/$s is missing" >&2; exit 1; }; done
fi

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  if [ -d "$ns_dir/labelled" ] && [ -d "$ns_dir/unlabelled" ]; then
    log "Stage 1: $ns_dir/labelled and unlabelled exist; skipping"
  else
    log "Stage 1: split $corpus/train: $labelled_fraction labelled, the rest with transcripts removed"
    t0=$(date +%s)
    $python local/split_labelled.py "$corpus/train" "$ns_dir" --labelled-fraction "$labelled_fraction" \
      --seed "$split_seed" --shard-size 200
    record split 0 "$(python_seconds "$corpus/train")" $(( $(date +%s) - t0 ))
  fi
fi

if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  log "Stage 2: teacher on $ns_dir/labelled"
  train teacher "$teacher_batches" --train-shar "$ns_dir/labelled"
  decode teacher
fi

if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  log "Stage 3: pseudo-labels for $ns_dir/unlabelled"
  exp="$exp_root/teacher"
  last=$(ls "$exp"/checkpoint-*.pt | sed 's/.*checkpoint-\([0-9]*\)\.pt/\1/' | sort -n | tail -1)
  n=$(ls "$exp"/checkpoint-*.pt | wc -l)
  avg_flags=(--avg 1 --use-averaged-model 0)
  [ "$n" -ge 2 ] && avg_flags=(--avg 1 --use-averaged-model 1)
  launcher=("$python")
  [ "$pseudo_nproc" -gt 1 ] && launcher=(torchrun --standalone --nproc-per-node "$pseudo_nproc")
  t0=$(date +%s)
  "${launcher[@]}" local/pseudo_label.py --teacher "$exp" --iter "$last" "${avg_flags[@]}" \
    --input "$ns_dir/unlabelled" --output "$ns_dir/pseudo" --decoding-method "$pseudo_method" \
    --min-confidence "$min_confidence" --length-ratio "$length_ratio" --device "$device" \
    --num-threads "$nj" --reference-shar "$corpus/train"
  record pseudo-label 0 "$(python_seconds "$ns_dir/unlabelled")" $(( $(date +%s) - t0 ))
fi

if [ "$stage" -le 7 ] && [ "$stop_stage" -ge 4 ]; then
  case "$student_init" in
    teacher)
      t_last=$(ls "$exp_root"/teacher/checkpoint-*.pt | sed 's/.*checkpoint-\([0-9]*\)\.pt/\1/' | sort -n | tail -1)
      # a new run counts the Zipformer's own schedules (layer and bypass skipping, dropout) from 0 again, as if
      # the weights were random; --ref-duration 0.1 runs that clock 10x faster, past the warm-up values within
      # about 50 batches, back where the teacher left them (it ended at 24,000)
      init_flags=(--base-lr "${student_lr:-0.02}" --ref-duration 0.1
                  --init-from "$exp_root/teacher/checkpoint-$t_last.pt") ;;
    scratch) init_flags=(--base-lr "${student_lr:-$base_lr}") ;;
    *) echo "$0: --student-init must be teacher or scratch, got $student_init" >&2; exit 1 ;;
  esac
fi

# the sources mixed by their size, so every cut is drawn about as often as in the whole training split
w_lab=$labelled_fraction
w_pseudo=$(awk -v f="$labelled_fraction" 'BEGIN { print 1 - f }')

if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
  log "Stage 4: noisy student (labelled + pseudo-labelled, unsupervised consistency term on)"
  train student "$student_batches" "${init_flags[@]}" --train-shar "$ns_dir/labelled:$w_lab" --train-shar "$ns_dir/pseudo:$w_pseudo" \
    --use-unsup-cr-ctc 1 --unsup-cr-ctc-loss-scale "$unsup_scale" --pseudo-ctc-loss-scale "$pseudo_scale"
  decode student
fi

if [ "$stage" -le 5 ] && [ "$stop_stage" -ge 5 ]; then
  log "Stage 5: the student without the unsupervised consistency term (rejected cuts dropped)"
  # without the consistency term only the kept pseudo-labels are trained on: mix the two sources by the
  # seconds each really gives, or the few kept cuts would fill two thirds of every batch
  kept=$($python -c 'import json, sys; print(json.load(open(sys.argv[1]))["kept_seconds"])' \
    "$ns_dir/pseudo/pseudo_label_report.json")
  lab=$(python_seconds "$ns_dir/labelled")
  w_kept=$(awk -v k="$kept" -v l="$lab" 'BEGIN { printf "%.4f", k / (k + l) }')
  w_lab_kept=$(awk -v k="$kept" -v l="$lab" 'BEGIN { printf "%.4f", l / (k + l) }')
  train student-no-unsup "$student_batches" "${init_flags[@]}" --train-shar "$ns_dir/labelled:$w_lab_kept" \
    --train-shar "$ns_dir/pseudo:$w_kept" --use-unsup-cr-ctc 0 --pseudo-ctc-loss-scale "$pseudo_scale"
  decode student-no-unsup
fi

if [ "$stage" -le 6 ] && [ "$stop_stage" -ge 6 ]; then
  log "Stage 6: the ceiling: the same cuts with their true transcripts"
  train ceiling "$student_batches" "${init_flags[@]}" --train-shar "$corpus/train"
  decode ceiling
fi

if [ "$stage" -le 7 ] && [ "$stop_stage" -ge 7 ] && [ "$student_init" = teacher ]; then
  log "Stage 7: the control: the teacher trained on for $student_batches more batches on the labelled cuts alone"
  train teacher-more "$student_batches" "${init_flags[@]}" --train-shar "$ns_dir/labelled"
  decode teacher-more
fi

if [ "$stage" -le 8 ] && [ "$stop_stage" -ge 8 ]; then
  log "Stage 8: results (test split: unseen sentences, held-out voices; $decoding_method, blank penalty $blank_penalty)"
  {
    printf 'model\ttest PER / PFER\ttraining batches\ttraining audio (s)\ttraining wall (s)\n'
    for name in teacher teacher-more student student-no-unsup ceiling; do
      f="$exp_root/$name/test-summary.txt"
      [ -f "$f" ] || continue
      per=$(awk -F'\t' '$1 == "test" { printf "%s / %s", $2, $3 }' "$f")
      row=$(awk -F'\t' -v n="train-$name" '$1 == n { r = $2 "\t" $3 "\t" $4 } END { print r }' "$compute")
      printf '%s\t%s\t%s\n' "$name" "$per" "${row:-?	?	?}"
    done
  } | tee "$ns_dir/results.tsv" | column -t -s $'\t'
  [ -f "$ns_dir/pseudo/pseudo_label_report.json" ] && log "pseudo-labels: $ns_dir/pseudo/pseudo_label_report.json"
  log "compute of every stage: $compute"
fi
log "Done."
