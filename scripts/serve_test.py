#!/usr/bin/env python
"""Robustness tests against a served model (TF Serving's REST or gRPC API) or a SavedModel in process.

    python scripts/serve_test.py --server=http://127.0.0.1:8501 --model=NAME \
        --saved_model=EXPORT_DIR/NAME/1 --data_dir=DIR --output_dir=DIR [--num_examples=N]
    python scripts/serve_test.py --grpc=127.0.0.1:8500 --model=NAME \
        --saved_model=EXPORT_DIR/NAME/1 --data_dir=DIR --output_dir=DIR
    python scripts/serve_test.py --saved_model=EXPORT_DIR/NAME/1 --data_dir=DIR --output_dir=DIR

Clean accuracy through the server against the local model's, white-box PGD on the local logits
signature transferred to the server (float and uint8), and black-box Square through the server
alone. Results go to OUTPUT_DIR/results.jsonl as they finish (a rerun resumes), then
serve_report.json and serve_report.md.
"""

import os
import sys

from absl import app

from robustcl.cli import flags as cli_flags

cli_flags.define_serve_test_flags()


def main(argv):
    args = cli_flags.config_or_exit(argv, cli_flags.serve_test_args_from_flags)
    from robustcl import data, hardware
    from robustcl.training import rundir
    from robustcl.serving import robustness
    from robustcl.serving.client import GrpcClient, RestClient, SavedModelBackend, ServerError

    print(hardware.startup_line(), flush=True)
    local = SavedModelBackend(args["saved_model"]) if args["saved_model"] else None
    dataset, image_size = args["dataset"], 0
    exported = os.path.join(args["saved_model"], rundir.EXPORT_ASSETS) if args["saved_model"] else None
    if not dataset and exported and os.path.isfile(os.path.join(exported, rundir.CONFIG)):
        config = rundir.read_config(exported)
        dataset, image_size = config.data.dataset, config.data.image_size
    if not dataset:
        sys.exit("error: --dataset: required without a robustcl export (--saved_model)")
    try:
        x, y = data.first_test_images(
            data.load_dataset(dataset, args["data_dir"], image_size=image_size), args["num_examples"]
        )
    except (data.DataNotFoundError, data.DataFormatError) as error:
        sys.exit(f"error: {error}")
    if args["server"] or args["grpc"]:
        client = RestClient if args["server"] else GrpcClient
        target = client(
            args["server"] or args["grpc"],
            args["model"],
            args["model_version"],
            args["timeout"],
            args["max_retries"],
            max_batch=args["max_batch"],
        )
    else:
        target, local = local, local
    try:
        report = robustness.run(
            target,
            local,
            x,
            y,
            args["output_dir"],
            args["eps"],
            args["pgd_steps"],
            args["square_queries"],
            args["chunk"],
            args["seed"],
        )
    except ServerError as error:
        sys.exit(f"error: {error} (finished results are kept in {args['output_dir']}/results.jsonl; rerun to resume)")
    print(robustness.markdown(report))


if __name__ == "__main__":
    app.run(main)
