#!/usr/bin/env python3
"""Train a Zipformer CR-CTC phone recognizer (ZIPA's Zipa-Cr models) on lhotse Shar shards.

Usage:
  # the CPU demo: tiny model on the embedded eSpeak corpus (see run_demo.sh for the exact flags)
  ./zipformer_crctc/train.py --model-size tiny --exp-dir zipformer_crctc/exp-demo \
    --train-shar data/shar/embedded/train --dev-shar data/shar/embedded/dev --max-duration 300 --max-minutes 15

  # ZIPA small on 4 GPUs, bf16
  ./zipformer_crctc/train.py --world-size 4 --model-size small --use-bf16 1 --max-duration 1000 \
    --train-shar data/shar/ipapack/train --dev-shar data/shar/ipapack/dev --exp-dir zipformer_crctc/exp-small

  # several machines through torchrun's rendezvous (run on every node)
  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
    zipformer_crctc/train.py --model-size large --use-fp16 1 --max-duration 600 --exp-dir zipformer_crctc/exp-large

  # plain CTC, no consistency regularisation; remove diacritics from the labels
  ./zipformer_crctc/train.py --use-cr-ctc 0 --remove-diacritics 1 ...

  # another model family of anyphone.families' registry through this recipe (--help lists them; the family's own
  # flags come with it); decode.py and export.py read the family from the exp dir's config.json
  ./zipformer_crctc/train.py --family NAME --exp-dir zipformer_crctc/exp-NAME ...

An interrupted run resumes from the newest checkpoint-N.pt in --exp-dir when started again with the same flags.
"""

from anyphone.training.recipe import train_main

if __name__ == "__main__":
    train_main("crctc", description=__doc__)
