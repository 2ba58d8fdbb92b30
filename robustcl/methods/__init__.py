"""Training methods, registered by name. Importing this package registers every method."""

from robustcl.methods import baselines  # noqa: F401  (registers standard, pgd_at)
from robustcl.methods.base import METHODS, LossTerm, Method, NoParams, get

__all__ = ["METHODS", "LossTerm", "Method", "NoParams", "get"]
