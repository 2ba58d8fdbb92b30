"""Frozen, validated experiment configuration.

`robustcl.cli.flags.config_from_flags` is the only place that builds an `ExperimentConfig` from
command-line flags; library code receives these objects and never reads flags. Every run writes its
config as JSON (`to_json`) and `from_json` reads it back, e.g. for evaluation or export.
"""

import dataclasses
import json
import math
import os
from typing import Any, Optional, Tuple

from robustcl.registry import unknown_message

NORMS = ("linf", "l2")
TRAIN_ATTACKS = ("none", "fgsm", "pgd")
# What --precision may say; "auto" is resolved by the hardware (robustcl.hardware) before a config
# is made, so a config holds one of the others.
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
CONTRASTIVE_SCOPES = ("global", "replica")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
LR_SCHEDULES = ("piecewise", "cosine", "constant")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the setting (as its flag)."""


def _check(condition, flag, message):
    if not condition:
        raise ConfigError(f"--{flag}: {message}")


def _check_known(value, names, flag, kind):
    """ConfigError naming --flag when `value` is not one of `names` (the one unknown-name message)."""
    if value not in names:
        raise ConfigError(f"--{flag}: {unknown_message(kind, value, names)}")


def _finite(value):
    return isinstance(value, (int, float)) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = "cifar10"
    data_dir: Optional[str] = None
    download: bool = True  # when the data is not on disk and the download host answers
    image_size: int = 0  # 0: the dataset's own (32 for CIFAR/SVHN, 64 Tiny-ImageNet, 224 otherwise)
    val_size: int = 1000
    train_examples: int = 0  # 0: the whole training split (minus validation); >0: a prefix, for smoke runs
    batch_size: int = 128
    eval_batch_size: int = 256
    augment: bool = True
    split_seed: int = 0

    def validate(self):
        _check(self.val_size >= 0, "val_size", f"must be >= 0, got {self.val_size}")
        _check(0 <= self.image_size <= 4096, "image_size", f"must be in [0, 4096], got {self.image_size}")
        _check(self.train_examples >= 0, "train_examples", f"must be >= 0, got {self.train_examples}")
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.eval_batch_size >= 1, "eval_batch_size", f"must be >= 1, got {self.eval_batch_size}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str = "resnet18"
    # Width of the projection head that produces the "embedding" output; 0 means the embedding is
    # the pooled backbone features (no head), as methods without a contrastive loss need nothing more.
    embedding_dim: int = 0
    embedding_head: str = "mlp"  # "mlp" (SimCLR/SupCon) or "linear" (MOREL)

    def validate(self):
        _check(self.embedding_dim >= 0, "embedding_dim", f"must be >= 0, got {self.embedding_dim}")
        _check_known(self.embedding_head, ("mlp", "linear"), "embedding_head", "head")


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """A norm-ball attack: `name` is none, fgsm (one step of size eps, no random start) or pgd."""

    name: str = "pgd"
    norm: str = "linf"
    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    random_start: bool = True

    def validate(self, prefix=""):
        _check_known(self.name, TRAIN_ATTACKS, prefix + "attack", "attack")
        _check_known(self.norm, NORMS, "norm", "norm")
        _check(_finite(self.eps) and self.eps >= 0, "eps", f"must be a finite number >= 0, got {self.eps}")
        _check(_finite(self.step_size) and self.step_size > 0, prefix + "step_size",
               f"must be a finite number > 0, got {self.step_size}")
        _check(self.steps >= 1, prefix + "attack_steps", f"must be >= 1, got {self.steps}")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    epochs: int = 100
    steps_per_epoch: int = 0  # 0: one pass over the training split per epoch
    learning_rate: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    # L2 penalty added to the gradient of every variable before momentum, as torch.optim.SGD's
    # weight_decay does in the published robust-training code (not Keras' decoupled decay).
    weight_decay: float = 5e-4
    lr_schedule: str = "piecewise"
    lr_decay_epochs: Tuple[int, ...] = (75, 90)
    lr_decay_factor: float = 0.1
    warmup_epochs: int = 0

    def validate(self):
        _check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        _check(self.steps_per_epoch >= 0, "steps_per_epoch", f"must be >= 0, got {self.steps_per_epoch}")
        _check(_finite(self.learning_rate) and self.learning_rate > 0, "learning_rate",
               f"must be > 0, got {self.learning_rate}")
        _check(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        _check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check_known(self.lr_schedule, LR_SCHEDULES, "lr_schedule", "schedule")
        _check(all(e >= 1 for e in self.lr_decay_epochs), "lr_decay_epochs",
               f"epochs must be >= 1, got {list(self.lr_decay_epochs)}")
        _check(list(self.lr_decay_epochs) == sorted(self.lr_decay_epochs), "lr_decay_epochs",
               f"must be increasing, got {list(self.lr_decay_epochs)}")
        _check(0 < self.lr_decay_factor <= 1, "lr_decay_factor",
               f"must be in (0, 1], got {self.lr_decay_factor}")
        _check(0 <= self.warmup_epochs < self.epochs, "warmup_epochs",
               f"must be in [0, epochs={self.epochs}), got {self.warmup_epochs}")


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """The training method by registered name and its hyperparameters (the method's Params)."""

    name: str = "pgd_at"
    params: Any = None


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model_dir: str = ""
    seed: int = 0
    precision: str = "float32"
    jit_compile: bool = False  # resolved from "auto" by the device in use; see cli.flags
    strategy: str = "auto"
    validation_freq: int = 1
    # Losses over pairs of examples (contrastive terms, mining, MOREL's attention) over the global
    # batch, gathered from every replica ("global"), or over each replica's part ("replica").
    contrastive_scope: str = "global"
    # BatchNorm statistics over the global batch when training on several replicas.
    sync_batchnorm: bool = True
    # A user's modules registering methods or backbones (imported before anything reads the
    # config; evaluation and export import them again to rebuild the network).
    extra_modules: Tuple[str, ...] = ()

    def validate(self):
        _check(bool(self.model_dir), "model_dir", "is required (where the run writes its files)")
        _check_known(self.precision, PRECISIONS, "precision", "precision")
        _check_known(self.strategy, STRATEGIES, "strategy", "strategy")
        _check_known(self.contrastive_scope, CONTRASTIVE_SCOPES, "contrastive_scope", "scope")
        _check(self.validation_freq >= 1, "validation_freq", f"must be >= 1, got {self.validation_freq}")


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
    """Embedding projector data for a fixed set of validation images every N epochs."""

    every_epochs: int = 10  # 0: never
    examples: int = 1000

    def validate(self):
        _check(self.every_epochs >= 0, "projector_every_epochs", f"must be >= 0, got {self.every_epochs}")
        _check(self.examples >= 1, "projector_examples", f"must be >= 1, got {self.examples}")


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
        self.train_attack.validate()
        self.val_attack.validate(prefix="val_")
        _check(self.val_attack.name == "pgd", "val_attack", "validation uses PGD")
        self.optimizer.validate()
        self.run.validate()
        self.projector.validate()
        if self.optimizer.lr_schedule == "piecewise":
            _check(all(e <= self.optimizer.epochs for e in self.optimizer.lr_decay_epochs),
                   "lr_decay_epochs",
                   f"{list(self.optimizer.lr_decay_epochs)} lie past --epochs={self.optimizer.epochs}")
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
            method=MethodConfig(name=d["method"]["name"],
                                params=params_class(**params) if params_class else params),
            train_attack=AttackConfig(**d["train_attack"]),
            val_attack=AttackConfig(**d["val_attack"]),
            optimizer=OptimizerConfig(**optimizer),
            run=RunConfig(**dict(d["run"], extra_modules=tuple(d["run"].get("extra_modules", ())))),
            projector=ProjectorConfig(**d.get("projector", {})),
        )

    @classmethod
    def from_json(cls, text, params_class=None):
        return cls.from_dict(json.loads(text), params_class)


# The attacks an evaluation runs by default; every name is registered in
# robustcl.evaluation.attacks (which checks names: a new attack is registered there, not listed here).
EVAL_ATTACKS = ("fgsm", "pgd", "pgd-strong", "cw", "autoattack")
SWEEP_ATTACKS = ("pgd", "fgsm", "cw", "apgd-ce")
EVAL_STRATEGIES = ("one_device", "mirrored")


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """scripts/evaluate.py: which model, which points, which attacks."""

    model_dir: str = ""  # a training run, or
    saved_model: str = ""  # a SavedModel: a robustcl export or any other, or
    keras_model: str = ""  # a Keras model file (model.save("m.keras"))
    checkpoint: str = "best"
    output_dir: str = ""  # default: <model_dir>/evaluation_<checkpoint>
    # The data and threat model when the model carries no robustcl config (else the config's).
    dataset: str = ""
    image_size: int = 0
    data_dir: Optional[str] = None
    download: bool = True
    # How a model that is not robustcl's is called (robustcl.artifacts).
    signature: str = ""
    input_key: str = ""
    output_key: str = ""
    input_range: str = "0,1"
    outputs: str = "logits"
    num_examples: int = 1000  # the first N test images
    attacks: Tuple[str, ...] = EVAL_ATTACKS
    norm: str = ""  # default: the training run's
    eps: float = -1.0  # default: the training run's
    pgd_steps: int = 20
    pgd_restarts: int = 1
    apgd_iterations: int = 100
    square_queries: int = 5000
    # AutoAttack's version (robustcl.evaluation.autoattack); a count of 0 is the version's own.
    version: str = "standard"
    apgd_restarts: int = 0
    fab_restarts: int = 0
    eot_iterations: int = 0
    square_restarts: int = 0
    sweep: bool = True
    sweep_attack: str = "pgd"
    seed: int = 0
    batch_size: int = 256
    projector_examples: int = 1000  # 0: write no projector data
    # Scale: points go in chunks (the unit of resuming; random draws are keyed by the chunk's first
    # point); chunk k belongs to shard k % num_shards; shard_index -1 evaluates every chunk (one
    # shard) or, with num_shards > 1, merges the shards' chunks into the report.
    chunk_size: int = 500
    num_shards: int = 1
    shard_index: int = -1
    strategy: str = "one_device"  # or mirrored: chunks spread over the machine's devices
    transfer_from: str = ""  # a surrogate (run, SavedModel, Keras file) for black-box transfer rows
    transfer_in_worst_case: bool = False

    def validate(self):
        from robustcl.artifacts import INPUT_RANGES, OUTPUT_KINDS

        given = [flag for flag in ("model_dir", "saved_model", "keras_model") if getattr(self, flag)]
        _check(len(given) == 1, "model_dir",
               "give exactly one of --model_dir (a training run), --saved_model (a SavedModel) and "
               f"--keras_model (a Keras model file); got {', '.join('--' + g for g in given) or 'none'}")
        _check(self.model_dir or bool(self.output_dir), "output_dir",
               f"is required with --{given[0]} (the model's own directory is not written to)")
        _check(self.input_range in INPUT_RANGES, "input_range",
               f"must be {' or '.join(INPUT_RANGES)}, got {self.input_range!r}")
        _check(self.outputs in OUTPUT_KINDS, "outputs",
               f"must be {' or '.join(OUTPUT_KINDS)}, got {self.outputs!r}")
        _check(not self.model_dir or (self.input_range, self.outputs, self.signature) == ("0,1", "logits", ""),
               "input_range", "--input_range, --outputs and --signature describe models that are not "
               "robustcl runs; a run directory's network is known")
        _check(0 <= self.image_size <= 4096, "image_size", f"must be in [0, 4096], got {self.image_size}")
        _check_known(self.sweep_attack, SWEEP_ATTACKS, "sweep_attack", "sweep attack")
        _check(self.checkpoint in ("best", "last"), "checkpoint",
               f"must be best or last, got {self.checkpoint!r}")
        _check(self.num_examples >= 1, "num_examples", f"must be >= 1, got {self.num_examples}")
        _check(bool(self.attacks), "attacks", "name at least one attack")
        if self.norm:  # "" is the training run's norm
            _check_known(self.norm, NORMS, "norm", "norm")
        _check(_finite(self.eps) and (self.eps == -1.0 or self.eps >= 0), "eps",
               f"must be >= 0, got {self.eps}")
        for name in ("pgd_steps", "pgd_restarts", "apgd_iterations", "square_queries", "batch_size"):
            _check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("apgd_restarts", "fab_restarts", "eot_iterations", "square_restarts"):
            _check(getattr(self, name) >= 0, name,
                   f"must be >= 1 (or 0: the --version's own), got {getattr(self, name)}")
        _check(self.projector_examples >= 0, "projector_examples",
               f"must be >= 0, got {self.projector_examples}")
        _check(self.chunk_size >= 1, "chunk_size", f"must be >= 1, got {self.chunk_size}")
        _check(self.num_shards >= 1, "num_shards", f"must be >= 1, got {self.num_shards}")
        _check(self.shard_index == -1 or 0 <= self.shard_index < self.num_shards, "shard_index",
               f"must be in [0, --num_shards={self.num_shards}), got {self.shard_index}")
        _check_known(self.strategy, EVAL_STRATEGIES, "strategy", "strategy")
        return self


@dataclasses.dataclass(frozen=True)
class ReproCell:
    """One method setting of the reproduction grid: its method flagfile and flags of its own."""

    name: str
    method_flagfile: str
    extra_flags: Tuple[str, ...] = ()


REPRO_EVAL_ATTACKS = ("fgsm", "pgd", "cw", "autoattack")


@dataclasses.dataclass(frozen=True)
class ReproduceConfig:
    """bench/reproduce.py: which cells, seeds and protocol; where runs and the record go."""

    cells: Tuple[ReproCell, ...]
    seeds: Tuple[int, ...]
    train_flagfile: str  # the protocol's training settings, applied after each method flagfile
    data_dir: str
    runs_dir: str
    record_dir: str
    record_name: str
    eval_examples: int = 1000
    eval_attacks: Tuple[str, ...] = REPRO_EVAL_ATTACKS
    pgd_steps: int = 20
    apgd_iterations: int = 100
    square_queries: int = 5000
    eval_batch_size: int = 500
    parallel: int = 1
    threads_per_cell: int = 0  # 0: TensorFlow's default (every core)
    # Black-box transfer: a network trained once with this method flagfile (and the protocol's
    # training flags) at this seed crafts examples that every cell's best checkpoint is scored on.
    surrogate_flagfile: str = ""  # "": no transfer stage
    surrogate_seed: int = 1000
    record_only: bool = False  # write the record from the run directories; train and evaluate nothing

    def validate(self):
        _check(bool(self.cells), "cell", "name at least one cell (--cell=NAME METHOD_FLAGFILE [FLAGS])")
        names = [c.name for c in self.cells]
        _check(len(set(names)) == len(names), "cell", f"cell names repeat: {names}")
        for cell in self.cells:
            _check(cell.name.replace("_", "").isalnum(), "cell",
                   f"{cell.name!r}: a cell name is letters, digits and _ (it names a directory)")
            _check(cell.name != "surrogate", "cell", "'surrogate' names the transfer surrogate's directory")
            _check(os.path.isfile(cell.method_flagfile), "cell",
                   f"{cell.name}: no flagfile {cell.method_flagfile}")
            bad = [f for f in cell.extra_flags if not f.startswith("--")]
            _check(not bad, "cell", f"{cell.name}: extra flags must start with --, got {bad}")
        _check(bool(self.seeds) and len(set(self.seeds)) == len(self.seeds), "seeds",
               f"give distinct seeds, got {list(self.seeds)}")
        _check(os.path.isfile(self.train_flagfile), "train_flagfile",
               f"no flagfile {self.train_flagfile!r}")
        _check(bool(self.data_dir) and os.path.exists(self.data_dir), "data_dir",
               f"{self.data_dir!r} does not exist (CIFAR-10 in the official layout: "
               "python ../shared/data/make_cifar10.py DIR)")
        for name in ("runs_dir", "record_dir", "record_name"):
            _check(bool(getattr(self, name)), name, "is required")
        _check(bool(self.eval_attacks), "eval_attacks", "name at least one attack")
        _check("pgd" in self.eval_attacks, "eval_attacks", "must include pgd (the last checkpoint's row)")
        for name in ("eval_examples", "pgd_steps", "apgd_iterations", "square_queries",
                     "eval_batch_size", "parallel"):
            _check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        _check(self.threads_per_cell >= 0, "threads_per_cell", f"must be >= 0, got {self.threads_per_cell}")
        if self.surrogate_flagfile:
            _check(os.path.isfile(self.surrogate_flagfile), "surrogate_flagfile",
                   f"no flagfile {self.surrogate_flagfile!r}")
            # A surrogate trained like a cell at one of its seeds would be that cell's own network:
            # its transfer rows would be white-box.
            _check(self.surrogate_seed not in self.seeds, "surrogate_seed",
                   f"{self.surrogate_seed} is one of --seeds; give the surrogate a seed of its own")
        return self
