"""lopbook: loss of plasticity in deep continual learning, reproduced and explained.

The library behind the book: continual backprop and baselines (:mod:`lopbook.algos`), networks
(:mod:`lopbook.nets`), problem streams (:mod:`lopbook.problems`), plasticity metrics
(:mod:`lopbook.metrics`), a results store with provenance (:mod:`lopbook.results`) and the
experiment registry behind ``python -m lopbook run`` (:mod:`lopbook.experiments`).
"""

from lopbook.modes import MODES, get_mode

__version__ = "0.1.0"
__all__ = ["MODES", "get_mode", "__version__"]
