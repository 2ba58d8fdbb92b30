#!/usr/bin/env python
"""Robustness tests against a served model (TF Serving REST API) or a SavedModel in process.

    python scripts/serve_test.py --server=http://127.0.0.1:8501 --model=NAME \
        --saved_model=EXPORT_DIR/NAME/1 --data_dir=DIR --output_dir=DIR [--num_examples=N]
    python scripts/serve_test.py --saved_model=EXPORT_DIR/NAME/1 --data_dir=DIR --output_dir=DIR

Clean accuracy through the server against the local model's, white-box PGD on the local logits
signature transferred to the server (float and uint8), and black-box Square through the server
alone. Results go to OUTPUT_DIR/results.jsonl as they finish (a rerun resumes), then
serve_report.json and serve_report.md.
"""

import json
import os
import sys

from absl import app

from robustcl.cli import flags as cli_flags

cli_flags.define_serve_test_flags()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from robustcl.config import ConfigError

    try:
        args = cli_flags.serve_test_args_from_flags()
    except ConfigError as error:
        sys.exit(f"error: {error}")
    import numpy as np

    from robustcl import data
    from robustcl.serving import robustness
    from robustcl.serving.client import RestClient, SavedModelBackend, ServerError

    local = SavedModelBackend(args["saved_model"]) if args["saved_model"] else None
    dataset = args["dataset"]
    if dataset is None and local is not None:
        with open(os.path.join(args["saved_model"], "assets.extra", "config.json")) as f:
            dataset = json.load(f)["data"]["dataset"]
    if dataset is None:
        sys.exit("error: --dataset: required without --saved_model")
    try:
        arrays = data.load_arrays(dataset, args["data_dir"])
    except (data.DataNotFoundError, data.DataFormatError) as error:
        sys.exit(f"error: {error}")
    n = min(args["num_examples"], len(arrays.x_test))
    x = arrays.x_test[:n].astype(np.float32) / 255.0
    y = arrays.y_test[:n]
    if args["server"]:
        target = RestClient(args["server"], args["model"], args["model_version"], args["timeout"],
                            args["max_retries"], max_batch=args["max_batch"])
    else:
        target, local = local, local
    try:
        report = robustness.run(target, local, x, y, args["output_dir"], args["eps"], args["pgd_steps"],
                                args["square_queries"], args["chunk"], args["seed"])
    except ServerError as error:
        sys.exit(f"error: {error} (finished results are kept in {args['output_dir']}/results.jsonl; "
                 "rerun to resume)")
    print(robustness.markdown(report))


if __name__ == "__main__":
    app.run(main)
