"""Weight averaging along trajectories (LAWA, EMA) and across ingredients (uniform and greedy soups)."""
from .averagers import AVERAGERS, ema_weights, greedy_soup, mean_of
from .run import average
from .stream import weighted_mean

__all__ = ["AVERAGERS", "average", "ema_weights", "greedy_soup", "mean_of", "weighted_mean"]
