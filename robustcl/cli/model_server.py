"""python -m robustcl.cli.model_server: the stand-in for tensorflow_model_server
(robustcl.serving.model_server), with tensorflow_model_server's flags."""

import sys

from absl import app

from robustcl.cli import flags as cli_flags
from robustcl.serving import model_server
from robustcl.settings import ConfigError


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        args = cli_flags.model_server_args_from_flags()
    except ConfigError as error:
        sys.exit(f"error: {error}")
    model_server.run(args)


if __name__ == "__main__":
    cli_flags.define_model_server_flags()
    app.run(main)
