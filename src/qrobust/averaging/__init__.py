"""Weight averaging along trajectories (LAWA, EMA) and across ingredients (uniform and greedy soups)."""
from .averagers import ema_weights, greedy_soup, mean_of
from .registry import AVERAGERS, AverageJob, register_averager
from .run import AverageOptions, average, make, plan, plan_for_sweep
from .stream import weighted_mean

__all__ = ["AVERAGERS", "AverageJob", "AverageOptions", "average", "make", "plan", "plan_for_sweep",
           "register_averager", "ema_weights", "greedy_soup", "mean_of", "weighted_mean"]
