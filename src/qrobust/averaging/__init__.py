"""Weight averaging along trajectories (LAWA, EMA) and across ingredients (uniform and greedy soups)."""
from .averagers import AVERAGERS, ema_weights, greedy_soup, mean_of
from .run import average, make, plan, plan_for_sweep
from .stream import weighted_mean

__all__ = ["AVERAGERS", "average", "make", "plan", "plan_for_sweep", "ema_weights", "greedy_soup", "mean_of", "weighted_mean"]
