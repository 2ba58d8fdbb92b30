"""The settings of a training run: optimizer, run, projector, and the ExperimentConfig that holds
them with the data, model, method and attack settings of the layers below.

`robustcl.cli.flags.config_from_flags` builds an ExperimentConfig from flags; library code receives
it and never reads flags. Every run writes its config as JSON (`to_json`), and `from_json` reads it
back, e.g. for evaluation or export.
"""

import dataclasses
import json
from typing import Tuple

from robustcl.attacks.settings import AttackConfig
from robustcl.data.settings import DataConfig
from robustcl.losses.global_batch import CONTRASTIVE_SCOPES
from robustcl.methods.settings import MethodConfig
from robustcl.models.settings import ModelConfig
from robustcl.registry import Registry
from robustcl.settings import check, check_fields, option

# What --precision may say; "auto" is resolved by the hardware (robustcl.hardware) before a config
# is made, so a config holds one of the others.
PRECISIONS = Registry("precision", ("float32", "mixed_bfloat16", "mixed_float16"))
STRATEGIES = Registry("strategy", ("auto", "one_device", "mirrored", "multi_worker"))
LR_SCHEDULES = Registry("schedule", ("piecewise", "cosine", "constant"))
# A training run keeps its best epoch (by validation robust accuracy) and its last.
CHECKPOINTS = Registry("checkpoint", ("best", "last"))


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    epochs: int = option(100, "Training epochs.", minimum=1)
    steps_per_epoch: int = option(0, "Steps per epoch (0: one pass over the training images).", minimum=0)
    learning_rate: float = option(0.1, "Peak SGD learning rate.", above=0, finite=True)
    momentum: float = option(0.9, "SGD momentum.", minimum=0, below=1)
    nesterov: bool = option(False, "Nesterov momentum.")
    # Added to the gradient of every variable before momentum, as torch.optim.SGD's weight_decay
    # does in the published robust-training code (not Keras' decoupled decay).
    weight_decay: float = option(
        5e-4, "L2 penalty on all weights (added to the gradient, as torch SGD's weight_decay).", minimum=0
    )
    lr_schedule: str = option("piecewise", "Learning-rate schedule.", choices=LR_SCHEDULES)
    lr_decay_epochs: Tuple[int, ...] = option(
        (75, 90), "Epochs after which the piecewise schedule multiplies the LR by --lr_decay_factor."
    )
    lr_decay_factor: float = option(0.1, "Piecewise decay factor.", above=0, maximum=1)
    warmup_epochs: int = option(0, "Linear LR warmup epochs.")

    def validate(self):
        check_fields(self)
        check(
            all(e >= 1 for e in self.lr_decay_epochs),
            "lr_decay_epochs",
            f"epochs must be >= 1, got {list(self.lr_decay_epochs)}",
        )
        check(
            list(self.lr_decay_epochs) == sorted(self.lr_decay_epochs),
            "lr_decay_epochs",
            f"must be increasing, got {list(self.lr_decay_epochs)}",
        )
        check(
            0 <= self.warmup_epochs < self.epochs,
            "warmup_epochs",
            f"must be in [0, epochs={self.epochs}), got {self.warmup_epochs}",
        )


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model_dir: str = option(
        "", "Where the run writes config, logs, checkpoints; rerunning with the same directory resumes."
    )
    seed: int = option(0, "Seed for weights, data order, augmentation and attacks.")
    # --precision and --jit_compile take "auto", resolved by the hardware before a config is made.
    precision: str = option(
        "float32",
        "auto, or a precision: auto is mixed_bfloat16 where the device "
        "computes bfloat16 natively (CPU flag avx512_bf16 or amx_bf16, GPU "
        "compute capability >= 8.0), mixed_float16 with loss scaling on GPUs of "
        "capability 7.x, else float32.",
        choices=PRECISIONS,
    )
    jit_compile: bool = option(
        False,
        "XLA-compile the attack: true, false, or auto (off on CPU, where "
        "bench/train_throughput.py measured XLA slower; on with a GPU).",
    )
    strategy: str = option(
        "auto",
        "Distribution strategy (multi_worker: the cluster in the TF_CONFIG environment variable).",
        choices=STRATEGIES,
    )
    validation_freq: int = option(1, "Validate every N epochs.", minimum=1)
    contrastive_scope: str = option(
        "global",
        "global: contrastive losses, hard-positive mining and MOREL's attention see the "
        "global batch, gathered from every replica and worker (N replicas train what one device "
        "trains); replica: each replica's part only (cheaper; another objective).",
        choices=CONTRASTIVE_SCOPES,
    )
    sync_batchnorm: bool = option(
        True, "BatchNorm statistics over the global batch when training on several replicas (else per replica)."
    )
    # Imported before anything reads the config; evaluation and export import them again to rebuild
    # the network.
    extra_modules: Tuple[str, ...] = option(
        (),
        "Python modules to import first: a user's methods and "
        "backbones registered with robustcl.methods.register / "
        "robustcl.models.register.",
    )

    def validate(self):
        check(bool(self.model_dir), "model_dir", "is required (where the run writes its files)")
        check_fields(self)


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
    """Embedding projector data for a fixed set of validation images every N epochs."""

    every_epochs: int = option(
        10,
        "Write TensorBoard projector embeddings (clean and PGD views of validation images) every N epochs; 0: never.",
        flag="projector_every_epochs",
        minimum=0,
    )
    examples: int = option(1000, "Validation images in the projector.", flag="projector_examples", minimum=1)

    def validate(self):
        check_fields(self)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig
    model: ModelConfig
    method: MethodConfig
    train_attack: AttackConfig  # the attack that makes training examples (the method may ignore it)
    val_attack: AttackConfig  # PGD used on the validation split for model selection
    optimizer: OptimizerConfig
    run: RunConfig
    projector: ProjectorConfig = ProjectorConfig()

    def validate(self):
        self.data.validate()
        self.model.validate()
        self.method.validate()
        self.train_attack.validate()
        self.val_attack.validate(flags=AttackConfig.VALIDATION_FLAGS)
        check(self.val_attack.name == "pgd", "val_attack", "validation uses PGD")
        self.optimizer.validate()
        self.run.validate()
        self.projector.validate()
        if self.optimizer.lr_schedule == "piecewise":
            check(
                all(e <= self.optimizer.epochs for e in self.optimizer.lr_decay_epochs),
                "lr_decay_epochs",
                f"{list(self.optimizer.lr_decay_epochs)} lie past --epochs={self.optimizer.epochs}",
            )
        return self

    def to_dict(self):
        d = dataclasses.asdict(self)
        params = self.method.params
        d["method"]["params"] = dataclasses.asdict(params) if dataclasses.is_dataclass(params) else {}
        return d

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d, params_class=None):
        """Rebuilds a config; `params_class` (the method's Params dataclass) types method.params."""
        params = d["method"].get("params") or {}
        optimizer = dict(d["optimizer"], lr_decay_epochs=tuple(d["optimizer"]["lr_decay_epochs"]))
        return cls(
            data=DataConfig(**d["data"]),
            model=ModelConfig(**d["model"]),
            method=MethodConfig(name=d["method"]["name"], params=params_class(**params) if params_class else params),
            train_attack=AttackConfig(**d["train_attack"]),
            val_attack=AttackConfig(**d["val_attack"]),
            optimizer=OptimizerConfig(**optimizer),
            run=RunConfig(**dict(d["run"], extra_modules=tuple(d["run"].get("extra_modules", ())))),
            projector=ProjectorConfig(**d.get("projector", {})),
        )

    @classmethod
    def from_json(cls, text, params_class=None):
        return cls.from_dict(json.loads(text), params_class)
