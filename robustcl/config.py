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

from robustcl.registry import Registry

# Closed sets of names, spelled as registries (the one name-lookup mechanism, with one message).
TRAIN_ATTACKS = Registry("attack", ("none", "fgsm", "pgd"))
# What --precision may say; "auto" is resolved by the hardware (robustcl.hardware) before a config
# is made, so a config holds one of the others.
PRECISIONS = Registry("precision", ("float32", "mixed_bfloat16", "mixed_float16"))
CONTRASTIVE_SCOPES = Registry("scope", ("global", "replica"))
STRATEGIES = Registry("strategy", ("auto", "one_device", "mirrored", "multi_worker"))
LR_SCHEDULES = Registry("schedule", ("piecewise", "cosine", "constant"))
EMBEDDING_HEADS = Registry("head", ("mlp", "linear"))
# A training run keeps its best epoch (by validation robust accuracy) and its last.
CHECKPOINTS = Registry("checkpoint", ("best", "last"))


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the setting (as its flag)."""


def _check(condition, flag, message):
    if not condition:
        raise ConfigError(f"--{flag}: {message}")


def check_name(registry, flag, value):
    """ConfigError naming --flag when `value` is not in `registry` (the one unknown-name message)."""
    if value not in registry:
        raise ConfigError(f"--{flag}: {registry.unknown_message(value)}")


def _finite(value):
    return isinstance(value, (int, float)) and math.isfinite(value)


# ---- fields that carry their flag and their constraints ------------------------------------------


def option(
    default,
    help_text,
    *,
    flag=None,
    choices=None,
    minimum=None,
    maximum=None,
    above=None,
    below=None,
    finite=False,
    exists=False,
):
    """A config field with what its flag needs and what `check_fields` checks.

    flag: the flag's name (default: the field's, with the caller's prefix); False: no flag of its
    own (the field is set from other flags). choices: a Registry, or a function returning one (for
    registries whose module imports TensorFlow). minimum/maximum are inclusive, above/below
    exclusive bounds; finite: no NaN or infinity; exists: a path that must exist (None or "": not
    given).
    """
    metadata = {
        "help": help_text,
        "flag": flag,
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "above": above,
        "below": below,
        "finite": finite,
        "exists": exists,
    }
    return dataclasses.field(default=default, metadata=metadata)


def _metadata(field):
    """A field's option metadata; a field made without `option` (a plain dataclass field of a
    user's Params) has no constraints and a flag of its name."""
    return {**_PLAIN_FIELD, **field.metadata}


_PLAIN_FIELD = {
    "help": "",
    "flag": None,
    "choices": None,
    "minimum": None,
    "maximum": None,
    "above": None,
    "below": None,
    "finite": False,
    "exists": False,
}


def choices_of(field):
    """The Registry of a field's names, or None."""
    choices = field.metadata.get("choices")
    return choices() if callable(choices) and not isinstance(choices, Registry) else choices


def flag_name(field, prefix=""):
    return field.metadata.get("flag") or prefix + field.name


def _bounds_message(meta, value):
    low = (
        ("[", meta["minimum"])
        if meta["minimum"] is not None
        else (("(", meta["above"]) if meta["above"] is not None else None)
    )
    high = (
        (meta["maximum"], "]")
        if meta["maximum"] is not None
        else ((meta["below"], ")") if meta["below"] is not None else None)
    )
    if low and high:
        return f"must be in {low[0]}{low[1]}, {high[0]}{high[1]}, got {value}"
    finite = "a finite number " if meta["finite"] else ""
    if low:
        return f"must be {finite}{'>=' if low[0] == '[' else '>'} {low[1]}, got {value}"
    if high:
        return f"must be {finite}{'<=' if high[1] == ']' else '<'} {high[0]}, got {value}"
    return f"must be a finite number, got {value}"


def _within(meta, value):
    if meta["finite"] and not _finite(value):
        return False
    return (
        (meta["minimum"] is None or value >= meta["minimum"])
        and (meta["maximum"] is None or value <= meta["maximum"])
        and (meta["above"] is None or value > meta["above"])
        and (meta["below"] is None or value < meta["below"])
    )


def check_fields(obj, prefix="", flags=None):
    """ConfigError naming the flag of the first field of `obj` (a dataclass of `option` fields) that
    breaks its constraints. `flags` renames fields' flags ({field: flag}) for a second use of a
    class (the validation attack's)."""
    for field in dataclasses.fields(obj):
        meta = _metadata(field)
        flag = (flags or {}).get(field.name) or flag_name(field, prefix)
        value = getattr(obj, field.name)
        registry = choices_of(field)
        if registry is not None:
            check_name(registry, flag, value)
        bounded = any(meta[k] is not None for k in ("minimum", "maximum", "above", "below"))
        if (
            value is not None
            and (bounded or meta["finite"])
            and not (isinstance(value, (int, float)) and _within(meta, value))
        ):
            raise ConfigError(f"--{flag}: {_bounds_message(meta, value)}")
        if meta["exists"] and value and not os.path.exists(value):
            raise ConfigError(f"--{flag}: {value} does not exist")


def _norms():
    from robustcl.attacks.threat import THREATS  # the threat models the attacks implement

    return THREATS


def _datasets():
    from robustcl.data import DATASETS

    return DATASETS


def _backbones():
    from robustcl.models.backbones import BACKBONES

    return BACKBONES


def _methods():
    from robustcl import methods

    return methods.METHODS


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = option("cifar10", "The dataset.", choices=_datasets)
    data_dir: Optional[str] = option(
        None,
        "The dataset's official layout (CIFAR archive or its folder, tiny-imagenet-200/), an "
        "image folder tree (train/<class>/*, val/<class>/*), a directory holding one of them, or a "
        "tfds data directory.",
        exists=True,
    )
    download: bool = option(
        True,
        "Download the data when it is not on disk (tfds, or the official "
        "archive into the Keras cache) if the download host answers; "
        "--nodownload forbids it.",
    )
    image_size: int = option(
        0,
        "Side of the square images for datasets of any size (imagenette, "
        "folder; default 224): the shorter side is resized to it, then the "
        "center is cropped. 0: the dataset's own.",
        minimum=0,
        maximum=4096,
    )
    val_size: int = option(1000, "Training images held out for validation/model selection.", minimum=0)
    train_examples: int = option(0, "Use only this many training images (0: all). For smoke runs.", minimum=0)
    batch_size: int = option(128, "Global training batch size.", minimum=1)
    eval_batch_size: int = option(256, "Global evaluation batch size.", minimum=1)
    augment: bool = option(True, "Pad-4 random crop + horizontal flip.")
    split_seed: int = option(0, "Seed choosing the validation images.")

    def validate(self):
        check_fields(self)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str = option("resnet18", "Backbone.", flag="model", choices=_backbones)
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


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """A norm-ball attack: `name` is none, fgsm (one step of size eps, no random start) or pgd."""

    name: str = option(
        "pgd", "Training attack (methods without an attack ignore it).", flag="attack", choices=TRAIN_ATTACKS
    )
    norm: str = option("linf", "Threat model norm (training and validation).", choices=_norms)
    eps: float = option(8 / 255, "Perturbation budget in [0,1] pixel units, e.g. 8/255.", minimum=0, finite=True)
    step_size: float = option(2 / 255, "Training PGD step size, e.g. 2/255.", above=0, finite=True)
    steps: int = option(10, "Training PGD steps.", flag="attack_steps", minimum=1)
    random_start: bool = option(True, "Training PGD starts uniformly in the ball.")

    # The validation attack is a second AttackConfig: its own flags for what differs from training's.
    VALIDATION_FLAGS = {"name": "val_attack", "step_size": "val_step_size", "steps": "val_attack_steps"}

    def validate(self, flags=None):
        check_fields(self, flags=flags)


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
        _check(
            all(e >= 1 for e in self.lr_decay_epochs),
            "lr_decay_epochs",
            f"epochs must be >= 1, got {list(self.lr_decay_epochs)}",
        )
        _check(
            list(self.lr_decay_epochs) == sorted(self.lr_decay_epochs),
            "lr_decay_epochs",
            f"must be increasing, got {list(self.lr_decay_epochs)}",
        )
        _check(
            0 <= self.warmup_epochs < self.epochs,
            "warmup_epochs",
            f"must be in [0, epochs={self.epochs}), got {self.warmup_epochs}",
        )


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """The training method by registered name and its hyperparameters (the method's Params, whose
    fields are flags --<method>_<field>)."""

    name: str = option("pgd_at", "Training method.", flag="method", choices=_methods)
    params: Any = None

    def validate(self):
        check_fields(self)


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
        _check(bool(self.model_dir), "model_dir", "is required (where the run writes its files)")
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
        _check(self.val_attack.name == "pgd", "val_attack", "validation uses PGD")
        self.optimizer.validate()
        self.run.validate()
        self.projector.validate()
        if self.optimizer.lr_schedule == "piecewise":
            _check(
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


# The attacks an evaluation runs by default; every name is registered in
# robustcl.evaluation.attacks (which checks names: a new attack is registered there, not listed here).
EVAL_ATTACKS = ("fgsm", "pgd", "pgd-strong", "cw", "autoattack")
SWEEP_ATTACKS = Registry("sweep attack", ("pgd", "fgsm", "cw", "apgd-ce"))
EVAL_STRATEGIES = Registry("strategy", ("one_device", "mirrored"))


def _autoattack():
    from robustcl.evaluation import autoattack

    return autoattack


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """scripts/evaluate.py: which model, which points, which attacks. Every field is a flag of its
    name but the data's (DataConfig's flags, the dataset defaulting to the model's own)."""

    model_dir: str = option("", "Training run directory to evaluate.")
    saved_model: str = option(
        "",
        "Or: a SavedModel directory: a robustcl export "
        "(EXPORT_DIR/<name>/<version>, attacked through its logits signature) "
        "or any other (through --signature).",
    )
    keras_model: str = option("", "Or: a Keras model file (model.save('m.keras') or .h5).")
    extra_modules: Tuple[str, ...] = option(
        (),
        "Python modules to import before the model is loaded: where a Keras model's own classes are "
        "registered (keras.saving.register_keras_serializable).",
    )
    checkpoint: str = option("best", "Which checkpoint of a training run.", choices=CHECKPOINTS)
    output_dir: str = option("", "Where reports go (default <model_dir>/evaluation_<checkpoint>).")
    # The data and threat model when the model carries no robustcl config (else the config's).
    dataset: str = option("", "The dataset (default: the model's own).", flag=False)
    image_size: int = option(0, "", flag=False, minimum=0, maximum=4096)
    data_dir: Optional[str] = option(None, "", flag=False, exists=True)
    download: bool = option(True, "", flag=False)
    # How a model that is not robustcl's is called (robustcl.artifacts).
    signature: str = option(
        "", "SavedModel signature to attack (default: logits for a robustcl export, else serving_default)."
    )
    input_key: str = option("", "The signature's image input, when it has several.")
    output_key: str = option(
        "", "The class-score output, when the model has several (default: logits if there is one)."
    )
    input_range: str = option("0,1", "Pixel range the model takes: 0,1 or 0,255 (eps stays in [0, 1] units).")
    outputs: str = option(
        "logits", "What the model outputs: logits or probabilities (attacked through their logarithm)."
    )
    num_examples: int = option(1000, "Evaluate the first N test images.", minimum=1)
    attacks: Tuple[str, ...] = option(
        EVAL_ATTACKS, "Attacks to run, by their registered names (robustcl.evaluation.attacks)."
    )
    norm: str = option("", "Threat model norm (default: the training run's).")
    eps: float = option(-1.0, "Budget, e.g. 8/255 (-1: the training run's).")
    pgd_steps: int = option(20, "PGD and CW steps.", minimum=1)
    pgd_restarts: int = option(1, "PGD and CW random restarts.", minimum=1)
    apgd_iterations: int = option(100, "APGD iterations (AutoAttack: 100).", minimum=1)
    square_queries: int = option(5000, "Square queries (AutoAttack: 5000).", minimum=1)
    # AutoAttack's version (robustcl.evaluation.autoattack); a count of 0 is the version's own.
    version: str = option(
        "standard",
        "AutoAttack's version, with the reference's settings: the "
        "cascade the 'autoattack' entry of --attacks runs (standard: APGD-CE, "
        "APGD-T, FAB-T, Square; plus: APGD-CE and APGD-DLR 5 restarts, FAB 5 "
        "restarts, Square, APGD-T, FAB-T; rand: APGD-CE and APGD-DLR with EOT over "
        "20 draws, for randomized models); custom: the AutoAttack stages listed in "
        "--attacks, in that order.",
        choices=lambda: _autoattack().VERSIONS,
    )
    apgd_restarts: int = option(0, "AutoAttack: APGD-CE and APGD-DLR restarts; 0: the --version's own.", minimum=0)
    fab_restarts: int = option(0, "AutoAttack: untargeted FAB restarts; 0: the --version's own.", minimum=0)
    eot_iterations: int = option(
        0, "AutoAttack: gradient draws averaged per APGD-CE/DLR step (EOT); 0: the --version's own.", minimum=0
    )
    square_restarts: int = option(0, "AutoAttack: Square restarts; 0: the --version's own.", minimum=0)
    sweep: bool = option(True, "Accuracy vs eps sweep.")
    sweep_attack: str = option("pgd", "Attack of the sweep.", choices=SWEEP_ATTACKS)
    seed: int = option(0, "Seed of every random start.")
    batch_size: int = option(256, "Attack batch size.", minimum=1)
    projector_examples: int = option(
        1000, "Test images whose clean and adversarial embeddings go to the TensorBoard projector (0: none).", minimum=0
    )
    # Scale: points go in chunks (the unit of resuming; random draws are keyed by the chunk's first
    # point); chunk k belongs to shard k % num_shards; shard_index -1 evaluates every chunk (one
    # shard) or, with num_shards > 1, merges the shards' chunks into the report.
    chunk_size: int = option(
        500,
        "Points per chunk: the unit of resuming (each finished chunk is "
        "written to OUTPUT_DIR/chunks/) and of sharding; random draws are keyed "
        "by the chunk's first point.",
        minimum=1,
    )
    num_shards: int = option(
        1,
        "Split the chunks over N shards (chunk k goes to shard k mod N); "
        "without --shard_index, merge the shards' results into the report.",
        minimum=1,
    )
    shard_index: int = option(
        -1, "Evaluate only this shard's chunks (a job array entry); the merge is a separate run without it (-1)."
    )
    strategy: str = option(
        "one_device",
        "mirrored spreads the chunks over the machine's GPUs (or logical CPU devices).",
        choices=EVAL_STRATEGIES,
    )
    transfer_from: str = option(
        "",
        "A surrogate network (a run directory, a SavedModel or a Keras "
        "model file): PGD and APGD-CE examples crafted on it are scored on "
        "the evaluated model, as transfer (black-box) rows of the report.",
        exists=True,
    )
    transfer_checkpoint: str = option(
        "best",
        "Which checkpoint of a --transfer_from run directory crafts the transfer examples (a naturally "
        "trained surrogate's best by validation robust accuracy is an early epoch; last is the trained "
        "network the literature's black-box protocol uses).",
        choices=CHECKPOINTS,
    )
    transfer_in_worst_case: bool = option(False, "Count the transfer rows in the per-example worst case.")

    def validate(self):
        from robustcl.artifacts import INPUT_RANGES, OUTPUT_KINDS

        given = [flag for flag in ("model_dir", "saved_model", "keras_model") if getattr(self, flag)]
        _check(
            len(given) == 1,
            "model_dir",
            "give exactly one of --model_dir (a training run), --saved_model (a SavedModel) and "
            f"--keras_model (a Keras model file); got {', '.join('--' + g for g in given) or 'none'}",
        )
        _check(
            self.model_dir or bool(self.output_dir),
            "output_dir",
            f"is required with --{given[0]} (the model's own directory is not written to)",
        )
        _check(
            self.input_range in INPUT_RANGES,
            "input_range",
            f"must be {' or '.join(INPUT_RANGES)}, got {self.input_range!r}",
        )
        _check(self.outputs in OUTPUT_KINDS, "outputs", f"must be {' or '.join(OUTPUT_KINDS)}, got {self.outputs!r}")
        _check(
            not self.model_dir or (self.input_range, self.outputs, self.signature) == ("0,1", "logits", ""),
            "input_range",
            "--input_range, --outputs and --signature describe models that are not "
            "robustcl runs; a run directory's network is known",
        )
        check_fields(self)
        _check(bool(self.attacks), "attacks", "name at least one attack")
        if self.norm:  # "" is the training run's norm
            check_name(_norms(), "norm", self.norm)
        _check(_finite(self.eps) and (self.eps == -1.0 or self.eps >= 0), "eps", f"must be >= 0, got {self.eps}")
        _check(
            self.shard_index == -1 or 0 <= self.shard_index < self.num_shards,
            "shard_index",
            f"must be in [0, --num_shards={self.num_shards}), got {self.shard_index}",
        )
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

    cells: Tuple[ReproCell, ...] = option((), "", flag=False)  # --cell, repeated (cli.flags)
    seeds: Tuple[int, ...] = option((0, 1), "Seeds; every cell trains once per seed.")
    train_flagfile: str = option(
        "",
        "Training settings of the protocol (network, data subset, epochs, "
        "batch, optimizer, schedule, threat model), applied after each cell's "
        "method flagfile so every method trains alike.",
    )
    data_dir: str = option("", "CIFAR-10 in the official layout (archive or folder).")
    runs_dir: str = option(
        "", "Where the runs go: RUNS_DIR/<cell>/seed<S>/ (TensorBoard logs, checkpoints, evaluation reports)."
    )
    record_dir: str = option("docs/results", "Where the record goes.")
    record_name: str = option("", "The record's file name: RECORD_DIR/NAME.md, .json, .png.")
    eval_examples: int = option(1000, "First N test images evaluated.", minimum=1)
    eval_examples_pgd: int = option(
        0,
        "First N test images of a second evaluation of the best checkpoint with PGD alone (a stage of "
        "its own; 0: none): PGD on more points than the whole --eval_attacks suite.",
        minimum=0,
    )
    eval_attacks: Tuple[str, ...] = option(
        REPRO_EVAL_ATTACKS, "Attacks on the best checkpoint (the last checkpoint gets clean and PGD)."
    )
    pgd_steps: int = option(20, "PGD and CW steps.", minimum=1)
    apgd_iterations: int = option(100, "APGD iterations (AutoAttack: 100).", minimum=1)
    square_queries: int = option(5000, "Square queries (AutoAttack: 5000).", minimum=1)
    eval_batch_size: int = option(500, "Attack batch size.", minimum=1)
    parallel: int = option(1, "Cells run at once (one process each).", minimum=1)
    threads_per_cell: int = option(
        0, "TensorFlow threads per cell's process (0: TensorFlow's default, every core).", minimum=0
    )
    # Black-box transfer: a network trained once with this method flagfile (and the protocol's
    # training flags) at this seed crafts examples that every cell's best checkpoint is scored on.
    surrogate_flagfile: str = option(
        "",
        "Method flagfile of the black-box surrogate: trained once (with "
        "--train_flagfile, at --surrogate_seed), it crafts transfer "
        "attacks on every cell's best checkpoint. Empty: no transfer stage.",
    )
    surrogate_seed: int = option(1000, "Seed of the surrogate's training (not one of --seeds).")
    record_only: bool = option(
        False, "Write the record from the finished stages in --runs_dir and stop: nothing is trained or evaluated."
    )
    # The size check before verdicts: a grid whose baseline is this weak cannot decide its claims.
    adequacy_cell: str = option("pgd_at", "The baseline cell whose accuracies decide whether verdicts are written.")
    adequacy_clean: float = option(
        0.0,
        "Verdicts only once --adequacy_cell's mean clean accuracy reaches this (0: no check).",
        minimum=0,
        maximum=1,
    )
    adequacy_pgd: float = option(
        0.0, "Verdicts only once --adequacy_cell's mean PGD accuracy reaches this (0: no check).", minimum=0, maximum=1
    )
    commit_record: bool = option(
        False,
        "After every finished cell, git-commit the record's files (and nothing else) in the repository "
        "that holds --record_dir, so a machine that stops loses at most the cell in progress.",
    )

    def validate(self):
        _check(bool(self.cells), "cell", "name at least one cell (--cell=NAME METHOD_FLAGFILE [FLAGS])")
        names = [c.name for c in self.cells]
        _check(len(set(names)) == len(names), "cell", f"cell names repeat: {names}")
        for cell in self.cells:
            _check(
                cell.name.replace("_", "").isalnum(),
                "cell",
                f"{cell.name!r}: a cell name is letters, digits and _ (it names a directory)",
            )
            _check(cell.name != "surrogate", "cell", "'surrogate' names the transfer surrogate's directory")
            _check(os.path.isfile(cell.method_flagfile), "cell", f"{cell.name}: no flagfile {cell.method_flagfile}")
            bad = [f for f in cell.extra_flags if not f.startswith("--")]
            _check(not bad, "cell", f"{cell.name}: extra flags must start with --, got {bad}")
        _check(
            bool(self.seeds) and len(set(self.seeds)) == len(self.seeds),
            "seeds",
            f"give distinct seeds, got {list(self.seeds)}",
        )
        _check(os.path.isfile(self.train_flagfile), "train_flagfile", f"no flagfile {self.train_flagfile!r}")
        _check(
            bool(self.data_dir) and os.path.exists(self.data_dir),
            "data_dir",
            f"{self.data_dir!r} does not exist (CIFAR-10 in the official layout: "
            "python ../shared/data/make_cifar10.py DIR)",
        )
        for name in ("runs_dir", "record_dir", "record_name"):
            _check(bool(getattr(self, name)), name, "is required")
        _check(bool(self.eval_attacks), "eval_attacks", "name at least one attack")
        _check("pgd" in self.eval_attacks, "eval_attacks", "must include pgd (the last checkpoint's row)")
        check_fields(self)
        if self.surrogate_flagfile:
            _check(
                os.path.isfile(self.surrogate_flagfile),
                "surrogate_flagfile",
                f"no flagfile {self.surrogate_flagfile!r}",
            )
            # A surrogate trained like a cell at one of its seeds would be that cell's own network:
            # its transfer rows would be white-box.
            _check(
                self.surrogate_seed not in self.seeds,
                "surrogate_seed",
                f"{self.surrogate_seed} is one of --seeds; give the surrogate a seed of its own",
            )
        return self


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """scripts/export.py: a training run's checkpoint as a SavedModel for TF Serving."""

    model_dir: str = option("", "Training run directory.")
    export_dir: str = option("", "Base directory; the model goes to EXPORT_DIR/<model_name>/<version>/.")
    model_name: Optional[str] = option(None, "Name under EXPORT_DIR (default: the run directory's name).")
    version: Optional[int] = option(None, "Version directory (default: one above the highest).", minimum=1)
    checkpoint: str = option("best", "Which checkpoint of the run.", choices=CHECKPOINTS)

    def validate(self):
        _check(
            bool(self.model_dir) and os.path.isdir(self.model_dir),
            "model_dir",
            f"{self.model_dir!r} is not a directory",
        )
        _check(bool(self.export_dir), "export_dir", "is required")
        check_fields(self)
        _check(
            self.model_name is None or (bool(self.model_name) and "/" not in self.model_name),
            "model_name",
            f"{self.model_name!r} is not a directory name",
        )
        return self


@dataclasses.dataclass(frozen=True)
class ServeTestConfig:
    """scripts/serve_test.py: robustness tests of a served model (REST or gRPC) or an export."""

    server: str = option("", "TF Serving REST address, e.g. http://127.0.0.1:8501.")
    grpc: str = option("", "Or TF Serving's gRPC address, HOST:PORT (e.g. 127.0.0.1:8500): images go as TensorProtos.")
    model: str = option("", "Model name on the server.")
    model_version: Optional[int] = option(None, "Version on the server (default: its latest).", minimum=1)
    saved_model: str = option(
        "",
        "The export, in process: the target when no --server is given, else the white-box model for transfer attacks.",
    )
    data_dir: Optional[str] = option(None, "Official archive/folder or tfds directory.", exists=True)
    dataset: str = option("", "The test data, any --dataset of training (default: the export's config).")
    num_examples: int = option(200, "First N test images.", minimum=1)
    eps: float = option(8 / 255, "L-inf budget.", minimum=0, maximum=1)
    pgd_steps: int = option(20, "Steps of the white-box transfer attack.", minimum=1)
    square_queries: int = option(1000, "Square query budget per image.", minimum=1)
    chunk: int = option(32, "Images per unit of resumable work.", minimum=1)
    output_dir: str = option("", "Where results.jsonl and the reports go.")
    timeout: float = option(30.0, "Seconds before a request times out.", above=0)
    max_retries: int = option(4, "Retries of a failed idempotent request.", minimum=0)
    max_batch: int = option(64, "Images per request at most.", minimum=1)
    seed: int = option(0, "Seed of the attacks.")

    def validate(self):
        if self.server and self.grpc:
            raise ConfigError("--server and --grpc: give one (REST or gRPC)")
        if not (self.server or self.grpc or self.saved_model):
            raise ConfigError("--server, --grpc or --saved_model: give at least one")
        _check(
            not (self.server or self.grpc) or bool(self.model),
            "model",
            f"required with --{'server' if self.server else 'grpc'}",
        )
        _check(
            not self.grpc or (not self.grpc.startswith(("http://", "https://")) and ":" in self.grpc),
            "grpc",
            f"expected HOST:PORT, got {self.grpc!r}",
        )
        _check(
            not self.server or self.server.startswith(("http://", "https://")),
            "server",
            f"expected http://HOST:PORT, got {self.server!r}",
        )
        _check(
            not self.saved_model or os.path.isfile(os.path.join(self.saved_model, "saved_model.pb")),
            "saved_model",
            f"no saved_model.pb in {self.saved_model}",
        )
        _check(bool(self.output_dir), "output_dir", "is required")
        check_fields(self)
        return self


@dataclasses.dataclass(frozen=True)
class ModelServerConfig:
    """python -m robustcl.serving.model_server: tensorflow_model_server's flags (model_servers/main.cc)
    that the stand-in implements, with their defaults, and its own failure injection for tests."""

    port: int = option(8500, "Port for gRPC (0: no gRPC).", minimum=0, maximum=65535)
    rest_api_port: int = option(0, "Port for the HTTP/REST API (0: no REST).", minimum=0, maximum=65535)
    model_name: str = option("default", "Name of the model (with --model_base_path).")
    model_base_path: str = option("", "Path holding the model's numeric version directories.")
    model_config_file: str = option(
        "",
        "A ModelServerConfig text proto: the models, their base paths, "
        "version policies and labels (instead of --model_name/"
        "--model_base_path).",
    )
    file_system_poll_wait_seconds: int = option(
        1, "Seconds between polls of the base paths for new (and removed) versions; 0 polls once, < 0 never."
    )
    host: str = option("0.0.0.0", "Address to listen on (tensorflow_model_server listens on every interface).")
    delay_s: float = option(0.0, "Stand-in only, for failure tests: sleep before every predict.", minimum=0)
    fail_first: int = option(
        0,
        "Stand-in only, for failure tests: answer the first N predicts as unavailable (REST 503, gRPC UNAVAILABLE).",
        minimum=0,
    )
    die_after: int = option(0, "Stand-in only, for failure tests: exit abruptly at predict N+1.", minimum=0)

    def validate(self):
        if self.model_config_file and self.model_base_path:
            raise ConfigError(
                "--model_config_file and --model_base_path: give one (the config file names every model's base path)"
            )
        if not (self.model_config_file or self.model_base_path):
            raise ConfigError("--model_base_path (with --model_name) or --model_config_file: give one")
        check_fields(self)
        if not (self.port or self.rest_api_port):
            raise ConfigError("--port and --rest_api_port are both 0: nothing would be served")
        if self.port and self.port == self.rest_api_port:
            raise ConfigError(f"--port and --rest_api_port: both {self.port}; gRPC and REST need two ports")
        return self
