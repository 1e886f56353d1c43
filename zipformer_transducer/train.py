#!/usr/bin/env python3
"""Train a Zipformer pruned transducer phone recognizer (ZIPA's Zipa-T models) on lhotse Shar shards.

The pruned RNN-T loss is anyphone's own PyTorch implementation (--rnnt-backend auto also uses k2 or
fast_rnnt when one is importable).

Usage:
  # the CPU demo (see run_demo.sh --recipe zipformer_transducer for the exact flags)
  ./zipformer_transducer/train.py --model-size tiny --exp-dir zipformer_transducer/exp-demo \
    --train-shar data/shar/embedded/train --dev-shar data/shar/embedded/dev --max-duration 300 --max-minutes 15

  # ZIPA small transducer on 4 GPUs
  ./zipformer_transducer/train.py --world-size 4 --model-size small --use-fp16 1 --max-duration 1000 \
    --prune-range 5 --lm-scale 0.25 --am-scale 0.0 --warm-step 2000 --context-size 2 \
    --train-shar data/shar/ipapack/train --dev-shar data/shar/ipapack/dev --exp-dir zipformer_transducer/exp-small

  # with a joint CTC head
  ./zipformer_transducer/train.py --use-ctc 1 --ctc-loss-scale 0.2 ...
"""

from anyphone.training.recipe import train_main

if __name__ == "__main__":
    train_main("transducer", description=__doc__)
