"""The settings of one evaluation (scripts/evaluate.py, robustcl.evaluation.run)."""

import dataclasses
from typing import Optional, Tuple

from robustcl.attacks.threat import THREATS
from robustcl.evaluation.autoattack import VERSIONS
from robustcl.evaluation.classifiers import INPUT_RANGES, OUTPUT_KINDS
from robustcl.registry import Registry
from robustcl.settings import check, check_fields, check_name, is_finite, option
from robustcl.training.settings import CHECKPOINTS

# The attacks an evaluation runs by default; every name is registered in
# robustcl.evaluation.attacks (which checks names: a new attack is registered there, not listed here).
EVAL_ATTACKS = ("fgsm", "pgd", "pgd-strong", "cw", "autoattack")
SWEEP_ATTACKS = Registry("sweep attack", ("pgd", "fgsm", "cw", "apgd-ce"))
EVAL_STRATEGIES = Registry("strategy", ("one_device", "mirrored"))


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
    # How a model that is not robustcl's is called (robustcl.evaluation.classifiers).
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
        choices=VERSIONS,
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
        given = [flag for flag in ("model_dir", "saved_model", "keras_model") if getattr(self, flag)]
        check(
            len(given) == 1,
            "model_dir",
            "give exactly one of --model_dir (a training run), --saved_model (a SavedModel) and "
            f"--keras_model (a Keras model file); got {', '.join('--' + g for g in given) or 'none'}",
        )
        check(
            self.model_dir or bool(self.output_dir),
            "output_dir",
            f"is required with --{given[0]} (the model's own directory is not written to)",
        )
        check(
            self.input_range in INPUT_RANGES,
            "input_range",
            f"must be {' or '.join(INPUT_RANGES)}, got {self.input_range!r}",
        )
        check(self.outputs in OUTPUT_KINDS, "outputs", f"must be {' or '.join(OUTPUT_KINDS)}, got {self.outputs!r}")
        check(
            not self.model_dir or (self.input_range, self.outputs, self.signature) == ("0,1", "logits", ""),
            "input_range",
            "--input_range, --outputs and --signature describe models that are not "
            "robustcl runs; a run directory's network is known",
        )
        check_fields(self)
        check(bool(self.attacks), "attacks", "name at least one attack")
        if self.norm:  # "" is the training run's norm
            check_name(THREATS, "norm", self.norm)
        check(is_finite(self.eps) and (self.eps == -1.0 or self.eps >= 0), "eps", f"must be >= 0, got {self.eps}")
        check(
            self.shard_index == -1 or 0 <= self.shard_index < self.num_shards,
            "shard_index",
            f"must be in [0, --num_shards={self.num_shards}), got {self.shard_index}",
        )
        return self
