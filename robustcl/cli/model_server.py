"""python -m robustcl.cli.model_server: the stand-in for tensorflow_model_server
(robustcl.serving.model_server), with tensorflow_model_server's flags."""

from absl import app

from robustcl.cli import flags as cli_flags
from robustcl.serving import model_server


def main(argv):
    args = cli_flags.config_or_exit(argv, cli_flags.model_server_args_from_flags)
    model_server.run(args)


if __name__ == "__main__":
    cli_flags.define_model_server_flags()
    app.run(main)
