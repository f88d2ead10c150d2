"""MARNet from Python: feature caches from numpy, training, tables, prediction, over the Rust library.

Every function takes the command line's options as keywords (``epochs=30`` for ``--epochs 30``),
with the same defaults; ``marnet train --help`` (``ablate``, ``extract``, ...) lists them.
"""

from ._marnet import FeatureCache, FeatureSplit, Predictor, Run, Table, ablate, compare, extract, train

__all__ = ["FeatureCache", "FeatureSplit", "Predictor", "Run", "Table", "ablate", "compare", "extract", "train"]
