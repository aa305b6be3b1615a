"""Training and measuring the router's learned second opinion.

``corpus/`` is what the heads learn from; ``heldout/`` is written apart from it and only
ever measured on (no miss in it is read); ``dev/`` is an earlier held-out set whose misses
were read while improving the rules and the corpus, reported but never quoted. ``make train-router`` writes ``services/router/data/second_opinion.json``
from the corpus; ``make eval`` reports held-out figures, 5-fold cross-validation on the
corpus and the cost-quality curve. scikit-learn is needed here only, never at run time.
"""
