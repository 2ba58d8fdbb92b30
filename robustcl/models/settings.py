"""The network settings of a training run (flags --model, --embedding_dim, --embedding_head)."""

import dataclasses

from robustcl.models.backbones import BACKBONES
from robustcl.registry import Registry
from robustcl.settings import check_fields, option

EMBEDDING_HEADS = Registry("head", ("mlp", "linear"))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str = option("resnet18", "Backbone.", flag="model", choices=BACKBONES)
    # 0: the embedding is the pooled backbone features (no head), as methods without a contrastive
    # loss need nothing more. Default: the method's declared head.
    embedding_dim: int = option(
        0, "Projection head width (0: the embedding is the pooled features; default: the method's).", minimum=0
    )
    embedding_head: str = option(
        "mlp",
        "Projection head: mlp (Dense-ReLU-Dense, SimCLR/SupCon) or linear (MOREL); default: the method's.",
        choices=EMBEDDING_HEADS,
    )

    def validate(self):
        check_fields(self)
