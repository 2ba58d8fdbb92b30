"""Training: AdversarialModel (the one train_step), schedules, callbacks and the run driver.

Imports embeddings, methods and below. rundir.py owns the run-directory and export layout;
settings.py the training settings (ExperimentConfig).
"""

from robustcl.training.model import AdversarialModel

__all__ = ["AdversarialModel"]
