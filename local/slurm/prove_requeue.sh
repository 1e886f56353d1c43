#!/bin/bash
# Prove local/slurm/train.sbatch on a real (one-machine) SLURM cluster: start the cluster
# (local/slurm/one_node_cluster.sh), submit the template with a tiny model, send the job the notice SLURM sends
# before a time limit (SIGUSR1 to the batch shell, as --signal=B:USR1@120 does), and watch it checkpoint, exit
# with status 3, requeue itself (scontrol requeue), resume from the checkpoint and finish. Prints the transcript
# (squeue / scontrol lines and the training log lines that show the stop and the resume).
#
#   sudo local/slurm/prove_requeue.sh [TRANSCRIPT]      # about 2 minutes on 2 cores
#
# Exit status 0 when the job was requeued once, resumed from the signal's checkpoint and completed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:-/dev/null}
WORK=${PROVE_DIR:-/tmp/anyphone-slurm-prove}
PY=${PYTHON:-$ROOT/.venv/bin/python}
MAX_BATCHES=${MAX_BATCHES:-40}
rm -rf "$WORK" && mkdir -p "$WORK"
exec > >(tee "$OUT") 2>&1

say() { echo "== $(date '+%T') $*"; }
say "starting the one-node cluster"
"$ROOT/local/slurm/one_node_cluster.sh" | tail -n 3
export SLURM_CONF=${SLURM_DIR:-/tmp/anyphone-slurm}/slurm.conf

say "a tiny corpus: 48 utterances in 8 shards"
"$PY" - "$WORK/corpus" <<'PY'
import sys
from pathlib import Path

import numpy as np

from anyphone.data.shar import make_cut, write_shar

rng = np.random.default_rng(0)
texts = ["aba", "kʰæt", "ʃiː", "mama", "goʊ", "tʃɛk", "nɪŋ", "pɑt"]
cuts = []
for i in range(48):
    dur = float(rng.uniform(0.5, 1.0))
    t = np.arange(int(dur * 16000)) / 16000
    wave = 0.3 * np.sin(2 * np.pi * (120 + 40 * (i % 8)) * t) + 0.003 * rng.standard_normal(len(t))
    cuts.append(make_cut(f"utt{i:03d}", wave.astype(np.float32), texts[i % 8], "eng"))
write_shar(cuts, Path(sys.argv[1]) / "train", shard_size=6)
PY

EXP=$WORK/exp
say "sbatch local/slurm/train.sbatch zipformer_crctc/train.py ... --max-batches $MAX_BATCHES"
cd "$ROOT"
JOB=$(PYTHON="$PY" NPROC_PER_NODE=1 sbatch --parsable --nodes 1 --cpus-per-task 2 --output "$WORK/job-%j.out" \
    local/slurm/train.sbatch zipformer_crctc/train.py --exp-dir "$EXP" --lang-dir "$ROOT/ipa_simplified" \
    --train-shar "$WORK/corpus/train" --max-duration 3 --num-buckets 2 --num-workers 0 --num-threads 1 \
    --tensorboard 0 --seed 11 --max-batches "$MAX_BATCHES" --num-epochs 100 --save-every-n 5 --log-interval 5 \
    --device cpu --model-size tiny --num-encoder-layers 1,1 --downsampling-factor 1,2 --encoder-dim 32,48 \
    --feedforward-dim 64,96 --num-heads 2,2 --query-head-dim 8 --value-head-dim 4 --pos-head-dim 2 --pos-dim 8 \
    --encoder-unmasked-dim 24,32 --cnn-module-kernel 15,15)
say "submitted job $JOB"
squeue -j "$JOB" -o '%.8i %.10P %.12j %.10T %.10M %.6D %R'

# wait for a checkpoint, then give the job the time-limit notice
for _ in $(seq 1 600); do
    if ls "$EXP"/checkpoint-10.pt >/dev/null 2>&1; then break; fi
    sleep 0.2
done
squeue -j "$JOB" -o '%.8i %.10P %.12j %.10T %.10M %.6D %R'
say "scancel --signal=USR1 --batch $JOB   (what --signal=B:USR1@120 sends 120 s before the time limit)"
scancel --signal=USR1 --batch "$JOB"

# the job stops, requeues itself (scontrol requeue), runs again and completes
restarts=0
for _ in $(seq 1 900); do
    line=$(scontrol show job "$JOB" 2>/dev/null | tr ' ' '\n' | grep -E '^(JobState|Restarts)=' | tr '\n' ' ')
    restarts=$(echo "$line" | sed -n 's/.*Restarts=\([0-9]*\).*/\1/p')
    state=$(echo "$line" | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
    if [ "${restarts:-0}" -ge 1 ] && [ "$state" = COMPLETED ]; then break; fi
    if [ "$state" = FAILED ] || [ "$state" = CANCELLED ]; then break; fi
    if [ "${last:-}" != "$line" ]; then say "scontrol: $line"; last=$line; fi
    sleep 0.5
done
say "scontrol: $(scontrol show job "$JOB" | tr ' ' '\n' | grep -E '^(JobId|JobState|Reason|Restarts|ExitCode|RunTime|BatchFlag|Requeue)=' | tr '\n' ' ')"
squeue -j "$JOB" -o '%.8i %.10P %.12j %.10T %.10M %.6D %R' 2>&1 || true
sacct -j "$JOB" 2>&1 | head -n 3 || true

say "the job's output ($WORK/job-$JOB.out), the lines that matter"
grep -E "job $JOB|Stopp|Stopped|Resuming|Resumed|resuming the training sampler|Saved .*checkpoint-|Done:|exitcode" \
    "$WORK/job-$JOB.out" | grep -v "Saved checkpoint" | sed -e 's/^/    /'
say "checkpoints: $(cd "$EXP" && ls checkpoint-*.pt | sort -t- -k2 -n | tr '\n' ' ')"

ok=1
grep -q "requeueing" "$WORK/job-$JOB.out" || { echo "FAIL: the job did not requeue itself"; ok=0; }
grep -q "Stopped on SIGUSR1" "$WORK/job-$JOB.out" || { echo "FAIL: no checkpoint-and-stop on SIGUSR1"; ok=0; }
grep -q "Resuming from" "$WORK/job-$JOB.out" || { echo "FAIL: the requeued job did not resume"; ok=0; }
[ -f "$EXP/checkpoint-$MAX_BATCHES.pt" ] || { echo "FAIL: no checkpoint-$MAX_BATCHES.pt"; ok=0; }
[ "${state:-}" = COMPLETED ] || { echo "FAIL: final state ${state:-unknown}"; ok=0; }
if [ "$ok" = 1 ]; then
    say "PASS: job $JOB stopped on the notice with a checkpoint, requeued itself ($restarts restart), resumed and finished"
    exit 0
fi
exit 1
