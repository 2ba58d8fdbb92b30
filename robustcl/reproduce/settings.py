"""The settings of the reproduction grid (bench/reproduce.py): cells, seeds, protocol, record."""

import dataclasses
import os
from typing import Tuple

from robustcl.settings import check, check_fields, option


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
        check(bool(self.cells), "cell", "name at least one cell (--cell=NAME METHOD_FLAGFILE [FLAGS])")
        names = [c.name for c in self.cells]
        check(len(set(names)) == len(names), "cell", f"cell names repeat: {names}")
        for cell in self.cells:
            check(
                cell.name.replace("_", "").isalnum(),
                "cell",
                f"{cell.name!r}: a cell name is letters, digits and _ (it names a directory)",
            )
            check(cell.name != "surrogate", "cell", "'surrogate' names the transfer surrogate's directory")
            check(os.path.isfile(cell.method_flagfile), "cell", f"{cell.name}: no flagfile {cell.method_flagfile}")
            bad = [f for f in cell.extra_flags if not f.startswith("--")]
            check(not bad, "cell", f"{cell.name}: extra flags must start with --, got {bad}")
        check(
            bool(self.seeds) and len(set(self.seeds)) == len(self.seeds),
            "seeds",
            f"give distinct seeds, got {list(self.seeds)}",
        )
        check(os.path.isfile(self.train_flagfile), "train_flagfile", f"no flagfile {self.train_flagfile!r}")
        check(
            bool(self.data_dir) and os.path.exists(self.data_dir),
            "data_dir",
            f"{self.data_dir!r} does not exist (CIFAR-10 in the official layout: "
            "python ../shared/data/make_cifar10.py DIR)",
        )
        for name in ("runs_dir", "record_dir", "record_name"):
            check(bool(getattr(self, name)), name, "is required")
        check(bool(self.eval_attacks), "eval_attacks", "name at least one attack")
        check("pgd" in self.eval_attacks, "eval_attacks", "must include pgd (the last checkpoint's row)")
        check_fields(self)
        if self.surrogate_flagfile:
            check(
                os.path.isfile(self.surrogate_flagfile),
                "surrogate_flagfile",
                f"no flagfile {self.surrogate_flagfile!r}",
            )
            # A surrogate trained like a cell at one of its seeds would be that cell's own network:
            # its transfer rows would be white-box.
            check(
                self.surrogate_seed not in self.seeds,
                "surrogate_seed",
                f"{self.surrogate_seed} is one of --seeds; give the surrogate a seed of its own",
            )
        return self
