#!/usr/bin/env python
"""Trains a robust classifier.

    python scripts/train.py --flagfile=configs/pgd_at_cifar10.flags --data_dir=DIR --model_dir=DIR

Rerunning the same command after an interruption resumes from the last finished epoch.
"""

import sys

from absl import app

from robustcl.cli import flags as cli_flags
from robustcl.settings import ConfigError

try:  # a user's methods and backbones first: their flags and names must exist when flags parse
    cli_flags.import_extra_modules(sys.argv)
except ConfigError as error:
    sys.exit(f"error: {error}")
cli_flags.define_train_flags()


def main(argv):
    from robustcl.data import DataFormatError, DataNotFoundError

    config = cli_flags.config_or_exit(argv, cli_flags.config_from_flags)
    from robustcl import hardware
    from robustcl.training import run
    from robustcl.training.distribute import ClusterConfigError

    print(hardware.startup_line(config.run.precision), flush=True)

    try:
        run.train(config, flags_text=cli_flags.FLAGS.flags_into_string())
    except (DataNotFoundError, DataFormatError, ClusterConfigError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    app.run(main)
