"""Which training method a run uses, by registered name, and its hyperparameters."""

import dataclasses
from typing import Any

from robustcl.methods.base import METHODS
from robustcl.settings import check_fields, option


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """The training method by registered name and its hyperparameters (the method's Params, whose
    fields are flags --<method>_<field>)."""

    name: str = option("pgd_at", "Training method.", flag="method", choices=METHODS)
    params: Any = None

    def validate(self):
        check_fields(self)
