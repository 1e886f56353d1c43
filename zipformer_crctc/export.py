#!/usr/bin/env python3
"""Export a Zipformer CR-CTC model: pretrained.pt (plain state_dict), tokens.txt and ONNX.

Usage:
  # average the running-average model between checkpoints 8000 and 12000, write fp32 + int8 ONNX
  # (the model is the one the exp dir's config.json describes: no --model-size needed)
  ./zipformer_crctc/export.py --exp-dir zipformer_crctc/exp --iter 12000 --avg 4 --use-averaged-model 1 \
    --onnx 1 --int8 1

  # a published ZIPA checkpoint (its size is read off the tensors), all three precisions
  ./zipformer_crctc/export.py --checkpoint zipa_small_crctc_500000_avg10.pth \
    --exp-dir exp-zipa-small --onnx 1 --fp16 1 --int8 1

Writes into --output-dir (default --exp-dir): pretrained.pt, tokens.txt, config.json (when none is there),
model-<label>.onnx, model-<label>.fp16.onnx, model-<label>.int8.onnx (label: iter-N-avg-K, epoch-N-avg-K or
the checkpoint name).  The model maps x (N, T, 80) fbank, x_lens (N,) to log_probs (N, T', V),
log_prob_lens (N,).
Decode with:  anyphone recognize -m <output-dir>/model-<label>.onnx -i x.wav  or
local/onnx_batch_decode.py DIR --model-type ctc
"""

import sys

from anyphone.export.recipe import export_main, get_export_parser

if __name__ == "__main__":
    export_main(get_export_parser("crctc", __doc__, sys.argv[1:]).parse_args(), "crctc")
