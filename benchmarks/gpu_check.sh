#!/usr/bin/env bash
# The GPU path in one run of at most 8 minutes, for a session that the `device` tool lends a GPU:
#   1. the CUDA kernel tests (tests/test_fused.py's GPU variant, tests/test_rnnt_loss.py's CUDA variant),
#   2. benchmarks/train_throughput.py for the small model at bf16 (target: 3000 s of audio per second on one
#      H100 / H200),
#   3. a 200-step single-GPU training of the small CR-CTC model from Shar with --fbank-on-device (bf16),
#   4. a decode of a held-out split with the checkpoint it wrote.
#
# Prepare here (the GPU machine has torch, numpy, sentencepiece, onnx, onnxruntime, but no lhotse and no
# network), once:
#   ../shared/tools/fetch_device_wheels.sh pytest pluggy iniconfig matplotlib contourpy cycler fonttools \
#       kiwisolver pillow pyparsing python-dateutil six
# then run it through the device tool, carrying the wheels:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540)
# It installs .whl/*.whl into /tmp/site when .whl is there. Logs and a summary go to $OUT (the device tool's
# folder that comes back; /tmp/gpu_check elsewhere): summary.txt, one log per stage.
#
# GPU_CHECK_SMOKE=1 runs the same stages on the CPU with a tiny model and a few steps (checks the script and
# every flag it passes, on a machine without a GPU; the kernel tests are then skipped by pytest).
# Exit status: 0 when every stage passed (a throughput under the target is reported, not failed), 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
SMOKE=${GPU_CHECK_SMOKE:-0}
RESULTS=${OUT:-/tmp/gpu_check}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check_work}
BUDGET=${GPU_CHECK_BUDGET_S:-470}  # seconds for everything; stages that would start too late are skipped
mkdir -p "$RESULTS"
rm -rf "$WORK" && mkdir -p "$WORK"
SUMMARY=$RESULTS/summary.txt
: > "$SUMMARY"
failed=0

say() { echo "== $(date '+%T') [+${SECONDS}s] $*" | tee -a "$SUMMARY"; }

# stage NAME TIMEOUT_S MIN_LEFT_S COMMAND...: runs COMMAND with a time limit, logs to $RESULTS/NAME.log,
# records PASS / FAIL / SKIP with the seconds it took
stage() {
    local name=$1 limit=$2 need=$3
    shift 3
    local left=$((BUDGET - SECONDS))
    if [ "$left" -lt "$need" ]; then
        say "SKIP $name: ${left}s left of the ${BUDGET}s budget, it needs about ${need}s"
        failed=1
        return 1
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local t0=$SECONDS
    say "start $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" > "$RESULTS/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$RESULTS/$name.log"
    if [ "$rc" = 0 ]; then
        say "PASS $name in $((SECONDS - t0))s"
    else
        say "FAIL $name: status $rc after $((SECONDS - t0))s (124: time limit); log $RESULTS/$name.log"
        failed=1
    fi
    return "$rc"
}

# -- environment --------------------------------------------------------------------------------------------
if compgen -G ".whl/*.whl" > /dev/null; then
    say "installing $(ls .whl/*.whl | wc -l) wheels from .whl into /tmp/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl \
        || { say "FAIL: pip could not install .whl/*.whl"; exit 1; }
    export PYTHONPATH=/tmp/site:$REPO${PYTHONPATH:+:$PYTHONPATH}
else
    export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
fi
missing=$("$PY" - <<'PY'
import importlib.util
need = ["torch", "lhotse", "soundfile", "lilcom", "kaldi_native_fbank", "sentencepiece", "kaldialign", "panphon",
        "matplotlib", "pytest"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
    say "FAIL: missing Python modules: $missing (fetch them here with ../shared/tools/fetch_device_wheels.sh, see the header)"
    exit 1
fi
if [ "$SMOKE" = 1 ]; then
    DEVICE=cpu; SIZE=tiny; DTYPE=fp32; BF16=0; STEPS=6; TP_SECONDS=8; TP_STEPS=1; TP_WARMUP=1
    N_TRAIN=48; MAXDUR=40; WORKERS=1; SAVE_EVERY=3
else
    DEVICE=cuda; SIZE=small; DTYPE=bf16; BF16=1; STEPS=200; TP_SECONDS=1000; TP_STEPS=10; TP_WARMUP=3
    N_TRAIN=800; MAXDUR=300; WORKERS=6; SAVE_EVERY=100
fi
"$PY" - <<'PY' 2>&1 | tee -a "$SUMMARY"
import torch
where = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {where}")
try:
    import triton
    print(f"triton {triton.__version__}")
except ImportError:
    print("triton: not installed (the Triton kernel tests will be skipped or fall back)")
PY
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "FAIL: no CUDA device visible to torch (set GPU_CHECK_SMOKE=1 for the CPU smoke run)"
    exit 1
fi

# -- 1. CUDA kernel tests -------------------------------------------------------------------------------------
if stage kernels 150 30 "$PY" -m pytest -q -rs -p no:cacheprovider \
    "tests/test_fused.py::test_triton_kernels_on_the_gpu" "tests/test_rnnt_loss.py::test_cuda_matches_cpu" \
    && [ "$SMOKE" != 1 ] && grep -q "skipped" "$RESULTS/kernels.log"; then
    say "FAIL kernels: some CUDA kernel tests were skipped on a GPU machine (see the SKIPPED lines above)"
    failed=1
fi

# -- 2. training throughput, small at bf16 --------------------------------------------------------------------
if stage throughput 120 40 "$PY" benchmarks/train_throughput.py --model-size "$SIZE" --device "$DEVICE" \
    --dtype "$DTYPE" --batch-seconds "$TP_SECONDS" --steps "$TP_STEPS" --warmup "$TP_WARMUP"; then
    rate=$(awk -v s="$SIZE" '$1 == s {print $3}' "$RESULTS/throughput.log" | tr -d ',')
    if [ "$SMOKE" != 1 ] && [ -n "$rate" ]; then
        if awk -v r="$rate" 'BEGIN {exit !(r >= 3000)}'; then
            say "throughput $rate s of audio per second: meets the 3000 target"
        else
            say "throughput $rate s of audio per second: BELOW the 3000 target"
        fi
    fi
fi

# -- 3. a corpus in Shar, then 200 steps of training from it with fbank on the device -------------------------
stage corpus 60 15 "$PY" - "$WORK/corpus" "$N_TRAIN" <<'PY'
"""Tones with a pitch per text (learnable), 2-6 s, written as Shar: train and a held-out test split."""
import sys
from pathlib import Path

import numpy as np

from anyphone.data.shar import make_cut, write_shar

root, n = Path(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
texts = ["aba", "kʰæt", "ʃiː", "mama", "goʊ", "tʃɛk", "nɪŋ", "pɑt"]


def cuts(prefix: str, count: int) -> list:
    out = []
    for i in range(count):
        dur = float(rng.uniform(2.0, 6.0))
        t = np.arange(int(dur * 16000)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (120 + 40 * (i % 8)) * t) + 0.003 * rng.standard_normal(len(t))
        out.append(make_cut(f"{prefix}{i:05d}", wave.astype(np.float32), texts[i % 8], "eng"))
    return out


print(write_shar(cuts("train", n), root / "train", shard_size=100), "train cuts")
print(write_shar(cuts("test", max(16, n // 20)), root / "test", shard_size=100), "test cuts")
PY

EXP=$WORK/exp
stage train 240 60 "$PY" zipformer_crctc/train.py --model-size "$SIZE" --device "$DEVICE" --use-bf16 "$BF16" \
    --fbank-on-device 1 --train-shar "$WORK/corpus/train" --exp-dir "$EXP" --lang-dir ipa_simplified \
    --max-duration "$MAXDUR" --num-buckets 4 --num-cuts-for-bins-estimate "$N_TRAIN" --repeat-train 1 \
    --max-batches "$STEPS" --num-epochs 1 \
    --num-workers "$WORKERS" --save-every-n "$SAVE_EVERY" --log-interval 20 --tensorboard 0 --valid-interval 100000
# (4 duration buckets: with the default 30 this small corpus never fills a batch in a bucket. --repeat-train:
# one endless epoch, so the ~10-batch passes over the corpus do not each save a 1 GB epoch checkpoint)
if [ -f "$EXP/log/log-train-0.txt" ]; then
    grep -E "s of audio per second|Done:" "$EXP/log/log-train-0.txt" | tail -n 3 | tee -a "$SUMMARY"
fi
if [ ! -f "$EXP/checkpoint-$STEPS.pt" ]; then
    say "FAIL train: no $EXP/checkpoint-$STEPS.pt (the run did not reach $STEPS batches)"
    failed=1
fi

# -- 4. decode the held-out split with the last checkpoint -----------------------------------------------------
stage decode 90 30 "$PY" zipformer_crctc/decode.py --exp-dir "$EXP" --iter "$STEPS" --avg 1 \
    --use-averaged-model 0 --model-size "$SIZE" --lang-dir ipa_simplified --device "$DEVICE" \
    --test-shar "test=$WORK/corpus/test" --decoding-method ctc-greedy-search --pfer 0 --num-workers 2
grep -hE "PER|per" "$RESULTS/decode.log" 2>/dev/null | tail -n 5 | tee -a "$SUMMARY"
cp -r "$EXP/log" "$RESULTS/train-logs" 2>/dev/null

say "done in ${SECONDS}s: $([ "$failed" = 0 ] && echo 'every stage passed' || echo 'some stage FAILED or was skipped')"
exit "$failed"
