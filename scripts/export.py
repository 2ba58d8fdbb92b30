#!/usr/bin/env python
"""Exports a trained run as a SavedModel for TF Serving.

    python scripts/export.py --model_dir=runs/pgd_at_cifar10 --export_dir=/models [--version=N]

Writes /models/<model_name>/<version>/ (signatures serving_default, serving_uint8, logits) and
prints its path; `saved_model_cli show --dir <path> --all` lists the signatures.
"""

import sys

from absl import app

from robustcl.cli import flags as cli_flags

cli_flags.define_export_flags()


def main(argv):
    args = cli_flags.config_or_exit(argv, cli_flags.export_args_from_flags)
    from robustcl import hardware
    from robustcl.serving.export import export_run

    print(hardware.startup_line(), flush=True)

    try:
        print(export_run(**args))
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    app.run(main)
