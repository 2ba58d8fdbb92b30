"""Training methods, registered by name. Importing this package registers every method."""

from robustcl.methods import baselines, contrastive, morel, trades  # noqa: F401  (registration)
from robustcl.methods.base import METHODS, LossTerm, Method, NoParams, get

__all__ = ["METHODS", "LossTerm", "Method", "NoParams", "get"]
