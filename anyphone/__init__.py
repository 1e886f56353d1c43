"""anyphone: multilingual IPA phone recognition (Zipformer CR-CTC and pruned transducer)."""
__version__ = "0.1.0"
