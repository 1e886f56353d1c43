#!/usr/bin/env bash
# Data preparation for anyphone, icefall style: run stages in order, or pick some with
#   ./prepare.sh --stage 1 --stop-stage 1
#
# Stages:
#   0  tokenizer: ipa_simplified/ (SentencePiece unigram model, tokens.txt, phone_set.txt) in ZIPA's id order
#   1  embedded corpus: multilingual IPA-labelled speech synthesized offline with eSpeak NG -> data/shar/embedded
#        --hours 3 --languages default    (the CPU demo's size)
#        --hours 50 --languages all       (a larger corpus: every language eSpeak transcribes natively)
#   2  your own corpus (optional): an Allosaurus/Kaldi-style directory with `wave` (utt_id path) and `text`
#      (utt_id phones), or lhotse recordings + supervisions manifests, converted to Shar -> data/shar/<user-name>
#        --user-data-dir /path/to/dir [--user-name mycorpus]
#        --user-recordings recordings.jsonl.gz --user-supervisions supervisions.jsonl.gz [--user-name mycorpus]
#   3  IPAPack++ shards from the Hugging Face hub (optional; needs network)
#        --ipapack-repo anyspeech/<repo-id> [--ipapack-patterns '*.jsonl.gz,*.tar']
#   4  pseudo-labels for noisy-student training (optional): a CTC teacher decodes unlabelled Shar into Shar whose
#      cuts carry its IPA, a confidence and its name (local/pseudo_label.py; filters: empty output, ZIPA's length
#      rule, --pseudo-min-confidence; resumable); zipformer_crctc/noisy_student.sh runs the whole method
#        --pseudo-teacher EXP_DIR|MODEL.pth|NAME [--pseudo-iter N --pseudo-avg K] --pseudo-input DIR
#        [--pseudo-output data/shar/pseudo] [--pseudo-min-confidence 0.6] [--pseudo-nproc GPUS]
set -euo pipefail
cd "$(dirname "$0")"

stage=0
stop_stage=100
nj=2                      # parallel workers
hours=3                   # training hours of the embedded corpus
languages=default         # comma list of eSpeak language codes, "default" or "all"
seed=0
user_data_dir=""
user_recordings=""        # lhotse manifests instead of --user-data-dir
user_supervisions=""
user_name=user
ipapack_repo=""
ipapack_patterns=""
pseudo_teacher=""          # stage 4: exp dir, .pt/.pth or published model name
pseudo_iter=0
pseudo_avg=1
pseudo_input=""            # unlabelled Shar (a folder or a remote source)
pseudo_output=""           # default: $shar_dir/pseudo
pseudo_min_confidence=0.0
pseudo_nproc=1             # >1: torchrun, one process per GPU
lang_dir=ipa_simplified
shar_dir=data/shar
python=${PYTHON:-python3}

. shared/parse_options.sh || exit 1

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (prepare.sh:${BASH_LINENO[0]}) $*"; }

if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ]; then
  log "Stage 0: tokenizer -> $lang_dir"
  $python local/prepare_lang.py --lang-dir "$lang_dir"
fi

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  log "Stage 1: embedded eSpeak NG corpus ($hours h, languages: $languages) -> $shar_dir/embedded"
  $python local/synthesize_corpus.py --out-dir "$shar_dir/embedded" --hours "$hours" \
    --languages "$languages" --num-workers "$nj" --seed "$seed"
fi

if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  if [ -n "$user_data_dir" ]; then
    log "Stage 2: user corpus $user_data_dir -> $shar_dir/$user_name"
    $python local/prepare_user_corpus.py --data-dir "$user_data_dir" --out-dir "$shar_dir/$user_name"
  elif [ -n "$user_recordings" ]; then
    log "Stage 2: user manifests $user_recordings + $user_supervisions -> $shar_dir/$user_name"
    $python local/prepare_user_corpus.py --recordings "$user_recordings" --supervisions "$user_supervisions" \
      --out-dir "$shar_dir/$user_name"
  else
    log "Stage 2: skipped (no --user-data-dir or --user-recordings)"
  fi
fi

if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  if [ -n "$ipapack_repo" ]; then
    log "Stage 3: IPAPack++ shards from $ipapack_repo -> download/ipapack"
    extra=()
    [ -n "$ipapack_patterns" ] && extra=(--patterns "$ipapack_patterns")
    $python local/download_ipapack.py --repo-id "$ipapack_repo" --out-dir download/ipapack "${extra[@]}"
  else
    log "Stage 3: skipped (no --ipapack-repo)"
  fi
fi
if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
  if [ -n "$pseudo_teacher" ] && [ -n "$pseudo_input" ]; then
    out=${pseudo_output:-$shar_dir/pseudo}
    log "Stage 4: pseudo-labels of $pseudo_input by $pseudo_teacher -> $out"
    launcher=("$python")
    [ "$pseudo_nproc" -gt 1 ] && launcher=(torchrun --standalone --nproc-per-node "$pseudo_nproc")
    "${launcher[@]}" local/pseudo_label.py --teacher "$pseudo_teacher" --iter "$pseudo_iter" --avg "$pseudo_avg" \
      --input "$pseudo_input" --output "$out" --min-confidence "$pseudo_min_confidence"
  else
    log "Stage 4: skipped (no --pseudo-teacher and --pseudo-input)"
  fi
fi
log "Done."
