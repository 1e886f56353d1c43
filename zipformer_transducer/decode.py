#!/usr/bin/env python3
"""Decode test sets with a trained Zipformer transducer and score PER / PFER.

Usage:
  ./zipformer_transducer/decode.py --exp-dir zipformer_transducer/exp-demo --iter 12000 --avg 4 \
    --model-size tiny --test-shar test=data/shar/embedded/test --decoding-method greedy_search

  ./zipformer_transducer/decode.py --exp-dir zipformer_transducer/exp --epoch 30 --avg 5 --model-size small \
    --test-shar test=data/shar/embedded/test --decoding-method modified_beam_search --beam-size 4

  # a published ZIPA transducer checkpoint
  ./zipformer_transducer/decode.py --checkpoint zipa_large_noncausal_500000_avg10.pth --model-size large \
    --exp-dir zipformer_transducer/exp-zipa-large --test-shar test=data/shar/embedded/test

Results go to <exp-dir>/<decoding-method>/: recogs-*, errs-*, per-language-* and per-summary-*.
"""

from anyphone.decoding.run import decode_main_cli

if __name__ == "__main__":
    decode_main_cli("transducer", description=__doc__)
