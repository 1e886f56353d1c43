"""Evaluation: the service behind the recipes' decode.py (choose and average weights, decode test sets with a
model family's search, score PER/PFER): :func:`anyphone.evaluation.run.evaluate` takes an
:class:`anyphone.evaluation.config.EvaluationConfig`; the command line (decode.py's flags and the
weight-selection flags export.py shares) is :mod:`anyphone.evaluation.recipe`."""
