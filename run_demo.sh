#!/usr/bin/env bash
# The main job on the embedded default, end to end on CPU (what `make demo` runs):
#   1. prepare.sh stages 0-1: tokenizer and the offline eSpeak NG corpus (10 languages, 3 h)
#   2. train the tiny model for a fixed amount of work (--max-batches) on --nj CPU cores: the same commit gives
#      the same model on any machine with the same thread count, however fast it is. The CR-CTC recipe's demo
#      trains plain CTC: at this scale CR-CTC's second view costs a second encoder pass and did not pay for it
#      (RESULTS.md: "Plain CTC instead of CR-CTC")
#   3. average the last checkpoints (icefall's --use-averaged-model) and decode the test split
#      (unseen sentences, voices held out from training); print PER and PFER per language
#
#   ./run_demo.sh                                   # zipformer_crctc, plain CTC, 1300 batches of training
#   ./run_demo.sh --cr-start-batch 900 --max-batches 1600 --lr-batches 1000   # the earlier CR-CTC demo
#   ./run_demo.sh --recipe zipformer_transducer     # the pruned transducer instead, 1600 batches
#   ./run_demo.sh --family NAME                     # another family of anyphone.families' registry through the
#                                                   # recipe (its decode method and blank penalty are the family's)
set -euo pipefail
cd "$(dirname "$0")"

nj=2
recipe=zipformer_crctc
family=""  # default: the recipe's own family
exp_dir=""
max_batches=""  # fixed work, not fixed time: a slower machine takes longer and gets the same model;
                # default: the recipe's own, below
crctc_batches=1300       # zipformer_crctc's demo: plain CTC
transducer_batches=1600  # zipformer_transducer's demo
max_duration=60
base_lr=0.045
lr_batches=""  # Eden's decay, in batches; default: the recipe's own (800 of 1300; the transducer 1000 of 1600)
cr_start_batch=none  # zipformer_crctc: none trains plain CTC throughout (the demo); N: CR-CTC from batch N
lr_epochs=4
cooldown_fraction=0.2
save_every_n=150
avg=1
blank_penalty=""  # decode: subtracted from blank's score; default: the family's recommended one (CR-CTC 0.5, the
                  # transducer 1.0, chosen on dev)
use_bf16=0      # fp32 on every CPU: on 2 cores of an AMX Xeon the demo trained 1.3-1.5x faster in fp32 than
                # with bf16 autocast, also with oneDNN kept to AVX512-BF16 (Zen 4's bf16); where bf16 is missing
                # it is emulated (3.7x slower on a 2-core EPYC); and one dtype rounds alike on every machine.
                # --use-bf16 1 for a GPU
malloc=auto     # auto: train with tcmalloc preloaded where it is installed (libtcmalloc-minimal4), else glibc-keep;
                # glibc-keep: glibc's malloc told to keep freed memory (no mmap, no trimming); glibc: glibc's
                # defaults. The same numbers with each, only the time and memory differ (RESULTS.md)
valid_interval=400  # dev PER every N batches and at the end (a dev pass takes 7-14 s of a 2-core CPU)
log_interval=50     # a progress line (loss, audio per second, ETA) every N batches
hours=3
languages=default
python=${PYTHON:-python3}

. shared/parse_options.sh || exit 1

exp_dir=${exp_dir:-$recipe/exp-demo}
log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (run_demo.sh) $*"; }
# glibc's malloc hands the pages of each step's activations back to the kernel and faults them in again in the
# next step (40-78% of the CPU in the kernel on a 2-core EPYC): its large blocks (over 32 MiB at most) are mmap'd
# and unmapped each time, and the heap's top is trimmed. tcmalloc keeps them (1.25x less wall time over the demo's
# first 150 batches, the same losses to the last digit, bounded memory over a whole demo); where it is not
# installed, glibc's own tunables do the same: no mmap (MALLOC_MMAP_MAX_=0), no trimming, a 1 GiB top pad
# (RESULTS.md: "make demo twice, with tcmalloc" and "glibc that keeps its memory").
glibc_keep=(env MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824)
train_env=()
case "$malloc" in
  auto)
    tcmalloc=$(shared/find_tcmalloc.sh)
    if [ -n "$tcmalloc" ]; then
      train_env=(env "LD_PRELOAD=$tcmalloc${LD_PRELOAD:+:$LD_PRELOAD}")
      log "Training with tcmalloc ($tcmalloc): same numbers as glibc's malloc, less time (--malloc glibc to turn off)"
    else
      train_env=("${glibc_keep[@]}")
      log "tcmalloc not found: training with glibc's malloc keeping freed memory (--malloc glibc for its defaults)"
    fi ;;
  glibc-keep) train_env=("${glibc_keep[@]}")
    log "Training with glibc's malloc keeping freed memory: same numbers, less time than its defaults" ;;
  glibc) ;;
  *) echo "run_demo.sh: --malloc must be auto, glibc-keep or glibc, got $malloc" >&2; exit 1 ;;
esac
start=$(date +%s)

./prepare.sh --stage 0 --stop-stage 1 --nj "$nj" --hours "$hours" --languages "$languages" --python "$python"

# the demo's tuned flags of each recipe's own family; another --family trains with its own defaults
case "$recipe" in
  zipformer_crctc)
    max_batches=${max_batches:-$crctc_batches}; lr_batches=${lr_batches:-800}
    if [ "$cr_start_batch" = none ]; then
      own_flags=(--use-cr-ctc 0 --enable-model-spec-aug 0)
    else
      own_flags=(--time-mask-ratio 1.0 --cr-start-batch "$cr_start_batch")
    fi ;;
  zipformer_transducer)
    max_batches=${max_batches:-$transducer_batches}; lr_batches=${lr_batches:-1000}
    own_flags=(--warm-step 300 --enable-model-spec-aug 0) ;;
  *) echo "run_demo.sh: --recipe must be zipformer_crctc or zipformer_transducer, got $recipe" >&2; exit 1 ;;
esac
if [ -n "$family" ]; then task_flags=(--family "$family"); else task_flags=("${own_flags[@]}"); fi
# the family's recommended decode method and blank penalty (anyphone.families); train.py records the family
read -r method family_penalty < <($python -c "import sys
from anyphone.families import get_family
from anyphone.training.recipe import chosen_family
o = get_family(chosen_family(sys.argv[1], sys.argv[2:])).recommended_decode_options
print(o.method, o.blank_penalty)" "${recipe#zipformer_}" "${task_flags[@]}")
blank_penalty=${blank_penalty:-$family_penalty}

log "Training $recipe ${family:+--family $family }(tiny) for $max_batches batches -> $exp_dir"
# Short-run schedule: Eden decays over --lr-batches instead of icefall's 7500, and the Zipformer's own
# regularisation schedules (dropout, layer skipping) count batches of --ref-duration 1 s, so they relax within
# the run as they would over a long one. fp32 unless --use-bf16 1 (above). The CR-CTC recipe's demo trains
# plain CTC on unmasked features: it leaves the all-blank phase about twice as early as with masks, and on dev
# 1300 plain batches beat the earlier demo's 900 plain + 700 CR-CTC ones, which cost 1.8x the compute
# (RESULTS.md). The last 20% of the batches lower the learning rate linearly to 0 (--cooldown-fraction; it took
# an earlier, time-budgeted demo from 8.66% to 7.59% test PER). The transducer: its simple/pruned warm-up over
# 300 batches. No speed perturbation (eSpeak already varies the speaking rate); noise, added silence and
# noise-only cuts stay on.
"${train_env[@]}" $python "$recipe/train.py" \
  --model-size tiny --exp-dir "$exp_dir" \
  --train-shar data/shar/embedded/train --dev-shar data/shar/embedded/dev \
  --max-duration "$max_duration" --num-workers 1 --num-threads "$nj" --use-bf16 "$use_bf16" \
  --num-epochs 1000 --max-batches "$max_batches" \
  --base-lr "$base_lr" --lr-batches "$lr_batches" --lr-epochs "$lr_epochs" --warmup-batches 100 --ref-duration 1 \
  --cooldown-fraction "$cooldown_fraction" \
  --speed-perturb 0 "${task_flags[@]}" \
  --save-every-n "$save_every_n" --keep-last-k $((avg + 2)) --average-period 10 \
  --valid-interval "$valid_interval" --valid-every-epoch 0 --log-interval "$log_interval"

last=$(ls "$exp_dir"/checkpoint-*.pt | sed 's/.*checkpoint-\([0-9]*\)\.pt/\1/' | sort -n | tail -1)
# the averaged-model window needs a checkpoint --avg saves back; fall back to fewer when the run was short
n_ckpt=$(ls "$exp_dir"/checkpoint-*.pt | wc -l)
use_avg=$(( n_ckpt - 1 < avg ? n_ckpt - 1 : avg ))
if [ "$use_avg" -ge 1 ]; then avg_flags=(--avg "$use_avg" --use-averaged-model 1); else avg_flags=(--avg 1 --use-averaged-model 0); fi

log "Decoding $exp_dir/checkpoint-$last.pt (${avg_flags[*]})"
$python "$recipe/decode.py" --exp-dir "$exp_dir" --iter "$last" "${avg_flags[@]}" \
  --test-shar test=data/shar/embedded/test --decoding-method "$method" --num-workers 1 \
  --num-threads "$nj" --blank-penalty "$blank_penalty" --save-decode-options 1  # recognize -m EXP decodes the same way

res="$exp_dir/$method"
suffix="iter-$last-avg-${avg_flags[1]}"
if [ "${avg_flags[3]}" = 1 ]; then suffix="$suffix-use-averaged-model"; fi
echo
echo "Per language (test: unseen sentences, held-out voices):"
column -t -s $'\t' "$res/per-language-test-$suffix.txt" 2>/dev/null || cat "$res/per-language-test-$suffix.txt"
log "Done in $(( ($(date +%s) - start) / 60 )) min. Curves: $exp_dir/training_curves.png; errors: $res/errs-test-$suffix.txt"
echo
echo "Note: this model has heard only eSpeak NG's synthetic voices and will do poorly on real recordings."
echo "For real speech, use a published ZIPA model:"
echo "  anyphone recognize -i your.wav                 # zipa-cr-small-500k, fetched on first use"
