#!/usr/bin/env python
"""Evaluates a trained run under attack and writes a report reviewers can check.

    python scripts/evaluate.py --model_dir=runs/pgd_at_cifar10 [--checkpoint=best|last]
        [--num_examples=1000] [--output_dir=DIR] [--data_dir=DIR]
    python scripts/evaluate.py --keras_model=model.keras --dataset=cifar10 --output_dir=DIR
    python scripts/evaluate.py --saved_model=DIR [--signature=NAME] --dataset=cifar10 --output_dir=DIR

Runs FGSM, PGD (and PGD with more steps and restarts), CW-Linf and AutoAttack's cascade
(--version=standard|plus|rand|custom) on the first N test images; writes report.json, report.md, accuracy_vs_eps.png and
per_class_accuracy.png, TensorBoard scalars (<model_dir>/evaluation) and projector embeddings.
Fails (exit 3) if an adversarial input leaves the threat set or an example counts robust while
misclassified clean.
"""

import sys

from absl import app

from robustcl.cli import flags as cli_flags
from robustcl.settings import ConfigError

try:  # a Keras model's own classes are registered by the user's modules: imported before loading
    cli_flags.import_extra_modules(sys.argv)
except ConfigError as error:
    sys.exit(f"error: {error}")
cli_flags.define_evaluate_flags()


def main(argv):
    from robustcl.data import DataFormatError, DataNotFoundError

    config = cli_flags.config_or_exit(argv, cli_flags.evaluation_config_from_flags)
    from robustcl.evaluation.classifiers import ModelLoadError
    from robustcl.evaluation import EvaluationError
    from robustcl.evaluation.run import evaluate_run
    from robustcl import hardware
    from robustcl.registry import ModuleImportError

    print(hardware.startup_line(), flush=True)

    try:
        report, output_dir = evaluate_run(config)
        if report is None:
            print(
                f"shard {config.shard_index} of {config.num_shards} done: its chunks are in "
                f"{output_dir}/chunks; merge with the same command, --num_shards="
                f"{config.num_shards} and no --shard_index"
            )
            return
    except (
        DataNotFoundError,
        DataFormatError,
        FileNotFoundError,
        ModelLoadError,
        ModuleImportError,
        ConfigError,
    ) as error:
        sys.exit(f"error: {error}")
    except EvaluationError as error:
        print(f"evaluation failed a hard check: {error}", file=sys.stderr)
        sys.exit(3)
    print(
        f"clean accuracy {report['clean_accuracy']:.4f}, worst-case robust accuracy "
        f"{report['worst_case_robust_accuracy']:.4f} over {report['num_points']} points"
    )
    for note in report["model_notes"]:
        print(f"  note: {note}")
    for row in report["attacks"]:
        print(f"  {row['attack']}: {row['robust_accuracy']:.4f}")
    for warning in report["warnings"]:
        print(f"  WARNING: {warning}")
    print(f"report: {output_dir}/report.md")


if __name__ == "__main__":
    app.run(main)
