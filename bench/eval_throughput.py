#!/usr/bin/env python
"""Images/second of evaluation attacks: PGD-20 and the AutoAttack-style cascade, one line each.

    python bench/eval_throughput.py [--models tiny,resnet18] [--num_examples 64] [--norm linf|l2]
        [--eps EPS] [--output FILE]
    python bench/eval_throughput.py --model=RUN|SAVED_MODEL|FILE.keras [--dataset cifar10]
        --data_dir=DIR --num_examples 200 --batch_size 200

With --models, the networks are freshly initialized and every point is labelled with the network's
own prediction, so every point starts correctly classified and each attack does its full work on
all of them. On such an undefended network APGD-CE fools nearly every point, so APGD-T and Square
then run on few: on a robust model APGD-T's 9 targets and up to 5000 Square queries run on every
point still robust, so this figure is a lower bound on the cascade's cost per image. With --model,
a trained model is attacked on the first test images with their labels, as an evaluation does.

For each cascade stage it prints and records its seconds and, of those, the seconds spent running
the model (robustcl.evaluation.suite.ModelClock) and the attack's own work (the rest).
"""

import argparse
import json
import os
import platform
import time

import robustcl  # noqa: F401  (first: it picks TensorFlow's CPU backend, fixed at TensorFlow's import)

import keras
import numpy as np
import tensorflow as tf

from robustcl import data, hardware, models
from robustcl.settings import ConfigError
from robustcl.evaluation import classifiers
from robustcl.evaluation import autoattack
from robustcl.evaluation import run as evaluation_run
from robustcl.evaluation.suite import Attacker


def _models_and_points(parser, args):
    """(name, network, images, labels or None: the network's own predictions) to time."""
    if args.model:
        model = classifiers.load_path(args.model, args.checkpoint, flag="model")
        try:
            dataset = evaluation_run.test_dataset(model, args.dataset, args.data_dir)
        except ConfigError as error:
            parser.error(str(error))
        x, y = data.first_test_images(dataset, args.num_examples)
        yield args.model, model.network, x, y
        return
    rng = np.random.default_rng(0)
    for model_name in args.models.split(","):
        keras.utils.set_random_seed(0)
        network = models.build(model_name, 10, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
        yield model_name, network, rng.uniform(size=(args.num_examples, 32, 32, 3)).astype(np.float32), None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,resnet18", help="fresh networks (robustcl.models)")
    parser.add_argument("--model", default="", help="a trained model instead: run directory, SavedModel, .keras")
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"])
    parser.add_argument("--dataset", default=None, help="with --model: default the run's own")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--num_examples", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--norm", default="linf", choices=["linf", "l2"])
    parser.add_argument("--eps", type=float, default=None, help="default: 8/255 for linf, 0.5 for l2")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "eval_throughput.json"))
    args = parser.parse_args()
    eps = args.eps if args.eps is not None else {"linf": 8 / 255, "l2": 0.5}[args.norm]
    machine = hardware.detect()
    print(f"cpu: {machine.describe()}, {os.cpu_count()} cores", flush=True)
    results = []
    for model_name, network, x, y in _models_and_points(parser, args):
        attacker = Attacker(network, args.batch_size, progress=False)
        if y is None:
            y = attacker.predict(x).astype(np.int32)
        attacker.gradient_attack(
            "warmup", x[: args.batch_size], y[: args.batch_size], args.norm, eps, 2, eps / 4, 1, "ce", 0
        )

        def record(name, seconds, robust, **extra):
            r = {
                "model": model_name,
                "attack": name,
                "norm": args.norm,
                "eps": eps,
                "num_examples": args.num_examples,
                "seconds": seconds,
                "images_per_s": args.num_examples / seconds,
                "robust_accuracy": float(robust),
                **extra,
            }
            results.append(r)
            print(
                f"{model_name} {name} {args.norm}: {r['images_per_s']:.2f} images/s ({seconds:.1f} s for "
                f"{args.num_examples} images, robust after: {r['robust_accuracy']:.3f})",
                flush=True,
            )

        start = time.perf_counter()
        pgd = attacker.gradient_attack("pgd", x, y, args.norm, eps, 20, 2.5 * eps / 20, 1, "ce", 0)
        record("pgd-20", time.perf_counter() - start, pgd.robust.mean())
        start = time.perf_counter()
        stage_start = [time.perf_counter()]

        def log_stage(message):  # each stage's start, with the time since the previous one
            now = time.perf_counter()
            print(f"{model_name} cascade {args.norm}: +{now - stage_start[0]:.1f} s, {message}", flush=True)
            stage_start[0] = now

        stages = autoattack.run(attacker, x, y, args.norm, eps, autoattack.resolve("standard"), log=log_stage)
        record(
            "autoattack-cascade",
            time.perf_counter() - start,
            stages[-1].robust.mean(),
            stages={
                s.name: {
                    "seconds": round(s.seconds, 2),
                    "model_seconds": round(s.model_seconds, 2),
                    "attack_seconds": round(s.seconds - s.model_seconds, 2),
                    "robust_after": float(s.robust.mean()),
                }
                for s in stages
            },
        )
        for s in stages:
            print(
                f"{model_name} cascade {args.norm} {s.name}: {s.seconds:.1f} s, of which model {s.model_seconds:.1f} s "
                f"and the attack's own work {s.seconds - s.model_seconds:.1f} s",
                flush=True,
            )
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(
            {
                "benchmark": "eval_throughput",
                "tensorflow": tf.__version__,
                "machine": platform.machine(),
                "cpu_model": machine.cpu_model,
                "cpu_flags": list(machine.cpu_flags),
                "backend": machine.backend,
                "backend_origin": machine.backend_origin,
                "onednn_isa_cap": machine.onednn_isa_cap,
                "cpus": os.cpu_count(),
                "results": results,
            },
            f,
            indent=2,
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
