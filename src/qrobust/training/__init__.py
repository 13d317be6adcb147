"""Training: the producer of trajectories (checkpoints + manifest), with cooldown branches."""
from .loop import train
from .schedule import Schedule

__all__ = ["train", "Schedule"]
