"""Evaluation: the service behind the recipes' decode.py (choose and average weights, decode test sets with a
model family's search, score PER/PFER) and the weight-selection flags export.py shares
(:mod:`anyphone.evaluation.run`)."""
