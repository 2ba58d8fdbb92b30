"""Training methods, registered by name. Importing this package imports every module in it, so a
method file placed here registers itself with no other edit; a user's own module registers its
methods with `register` and is imported by scripts/train.py --extra_modules=MODULE.

Imports attacks, losses, models and the bottom layer; its settings: methods/settings.py.
"""

import importlib
import pkgutil

from robustcl.methods.base import METHODS, LossTerm, Method, NoParams, PassCounts, check_params, get, param, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "LossTerm", "Method", "NoParams", "PassCounts", "check_params", "get", "param", "register"]
