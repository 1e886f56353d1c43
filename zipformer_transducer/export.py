#!/usr/bin/env python3
"""Export a Zipformer pruned-transducer model: pretrained.pt (plain state_dict), tokens.txt and ONNX.

Usage:
  # the model is the one the exp dir's config.json describes (no --model-size needed)
  ./zipformer_transducer/export.py --exp-dir zipformer_transducer/exp --epoch 30 --avg 5 \
    --use-averaged-model 1 --onnx 1 --int8 1
  # a published ZIPA checkpoint: its size (and a joint CTC head, if any) is read off the tensors
  ./zipformer_transducer/export.py --checkpoint zipa_small_noncausal_500000_avg10.pth \
    --exp-dir exp-zipa-t-small --onnx 1 --fp16 1 --int8 1

Writes into --output-dir (default --exp-dir): pretrained.pt, tokens.txt, config.json (when none is there)
and, as icefall's export-onnx.py,
encoder-<label>.onnx, decoder-<label>.onnx, joiner-<label>.onnx (+ .fp16.onnx / .int8.onnx):
  encoder: x (N, T, 80), x_lens (N,) -> encoder_out (N, T', joiner_dim) ALREADY projected by
           joiner.encoder_proj, encoder_out_lens (N,)
  decoder: y (N, context_size) int64 (-1 = no token) -> decoder_out (N, joiner_dim), projected by
           joiner.decoder_proj
  joiner:  encoder_out (N, joiner_dim), decoder_out (N, joiner_dim) -> logit (N, vocab)
Decode with OnnxTransducerRecognizer(<dir>, suffix="-<label>.int8.onnx") or local/onnx_batch_decode.py.
"""

import sys

from anyphone.export.recipe import export_main, get_export_parser

if __name__ == "__main__":
    export_main(get_export_parser("transducer", __doc__, sys.argv[1:]).parse_args(), "transducer")
