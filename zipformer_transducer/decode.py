#!/usr/bin/env python3
"""Decode test sets with a trained Zipformer transducer and score PER / PFER.

Usage:
  # the exp dir's config.json describes the model: no --model-size needed
  ./zipformer_transducer/decode.py --exp-dir zipformer_transducer/exp-demo --iter 12000 --avg 4 \
    --test-shar test=data/shar/embedded/test --decoding-method greedy_search

  ./zipformer_transducer/decode.py --exp-dir zipformer_transducer/exp --epoch 30 --avg 5 \
    --test-shar test=data/shar/embedded/test --decoding-method modified_beam_search --beam-size 4

  # a published ZIPA transducer checkpoint (its size is read off the tensors)
  ./zipformer_transducer/decode.py --checkpoint zipa_large_noncausal_500000_avg10.pth \
    --exp-dir zipformer_transducer/exp-zipa-large --test-shar test=data/shar/embedded/test

Results go to <exp-dir>/<decoding-method>/: recogs-*, errs-*, per-language-* and per-summary-*. Tune
--blank-penalty on a dev set; --save-decode-options 1 then records it (with the method and beam) in the exp dir's
config.json for `anyphone recognize -m <exp-dir>`, whose --emit is the same knob (emit = exp(blank_penalty)).
"""

from anyphone.evaluation.recipe import decode_main_cli

if __name__ == "__main__":
    decode_main_cli("transducer", description=__doc__)
