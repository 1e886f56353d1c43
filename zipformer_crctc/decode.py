#!/usr/bin/env python3
"""Decode test sets with a trained Zipformer CR-CTC model and score PER / PFER.

Usage:
  # average the running-average model between checkpoints 8000 and 12000 (icefall's --use-averaged-model)
  ./zipformer_crctc/decode.py --exp-dir zipformer_crctc/exp-demo --iter 12000 --avg 4 --use-averaged-model 1 \
    --model-size tiny --test-shar test=data/shar/embedded/test --decoding-method ctc-greedy-search

  # prefix beam search over epoch checkpoints
  ./zipformer_crctc/decode.py --exp-dir zipformer_crctc/exp --epoch 30 --avg 5 --model-size small \
    --test-shar test=data/shar/embedded/test --decoding-method ctc-prefix-beam-search --beam-size 8

  # a published ZIPA checkpoint
  ./zipformer_crctc/decode.py --checkpoint zipa_small_crctc_500000_avg10.pth --model-size small \
    --exp-dir zipformer_crctc/exp-zipa-small --test-shar test=data/shar/embedded/test

Results go to <exp-dir>/<decoding-method>/: recogs-*, errs-*, per-language-* and per-summary-*.
"""

from anyphone.decoding.run import decode_main_cli

if __name__ == "__main__":
    decode_main_cli("crctc", description=__doc__)
