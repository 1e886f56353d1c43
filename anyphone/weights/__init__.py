"""The weights layer: everything between a model's tensors and the files that hold them.

- :mod:`anyphone.weights.safe_load`: load a state_dict without running pickled code; tell a model's family
  from its keys (no torch import until called);
- :mod:`anyphone.weights.checkpoint`: training checkpoints (atomic save, checksum-verified load, finding,
  pruning, averaging);
- :mod:`anyphone.weights.config`: the Zipformer configuration of a state_dict and the model it builds;
- :mod:`anyphone.weights.expdir`: an exp dir's ``config.json`` (read and written here only) and the choice of
  weights that ``--iter/--epoch/--avg/--use-averaged-model`` make.

It imports only the ground (models, text, fileio, utils); training, decoding, inference and export all build on
it, and none of them reaches into another for weights.
"""
