#!/usr/bin/env python3
"""Decode test sets with a trained Zipformer CR-CTC model and score PER / PFER.

Usage:
  # average the running-average model between checkpoints 8000 and 12000 (icefall's --use-averaged-model)
  # (the exp dir's config.json describes the model: no --model-size needed)
  ./zipformer_crctc/decode.py --exp-dir zipformer_crctc/exp-demo --iter 12000 --avg 4 --use-averaged-model 1 \
    --test-shar test=data/shar/embedded/test --decoding-method ctc-greedy-search

  # prefix beam search over epoch checkpoints
  ./zipformer_crctc/decode.py --exp-dir zipformer_crctc/exp --epoch 30 --avg 5 \
    --test-shar test=data/shar/embedded/test --decoding-method ctc-prefix-beam-search --beam-size 8

  # tune the blank penalty on dev and record it for `anyphone recognize -m zipformer_crctc/exp-demo`
  ./zipformer_crctc/decode.py --exp-dir zipformer_crctc/exp-demo --iter 12000 --avg 4 \
    --test-shar dev=data/shar/embedded/dev --blank-penalty 0.5 --save-decode-options 1

  # a published ZIPA checkpoint (its size is read off the tensors)
  ./zipformer_crctc/decode.py --checkpoint zipa_small_crctc_500000_avg10.pth \
    --exp-dir zipformer_crctc/exp-zipa-small --test-shar test=data/shar/embedded/test

Results go to <exp-dir>/<decoding-method>/: recogs-*, errs-*, per-language-* and per-summary-*.
--save-decode-options 1 records --decoding-method, --beam-size and --blank-penalty in <exp-dir>/config.json;
`anyphone recognize -m <exp-dir>` then uses the penalty as its --emit (emit = exp(blank_penalty)).
"""

from anyphone.evaluation.recipe import decode_main_cli

if __name__ == "__main__":
    decode_main_cli("crctc", description=__doc__)
