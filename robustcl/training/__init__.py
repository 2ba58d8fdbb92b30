"""Training: AdversarialModel (the one train_step), schedules, callbacks and the run driver."""

from robustcl.training.model import AdversarialModel

__all__ = ["AdversarialModel"]
