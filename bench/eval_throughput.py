#!/usr/bin/env python
"""Images/second of evaluation attacks: PGD-20 and the AutoAttack-style cascade, one line each.

    python bench/eval_throughput.py [--models tiny,resnet18] [--num_examples 64] [--norm linf|l2]
        [--eps EPS] [--output FILE]

The networks are freshly initialized and every point is labelled with the network's own prediction,
so every point starts correctly classified and each attack does its full work on all of them.
On such an undefended network APGD-CE fools nearly every point, so APGD-T and Square then run on
few: on a robust model APGD-T's 9 targets and up to 5000 Square queries run on every point still
robust, so this figure is a lower bound on the cascade's cost per image.
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

from robustcl import hardware, models
from robustcl.evaluation import autoattack
from robustcl.evaluation.suite import Attacker


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,resnet18")
    parser.add_argument("--num_examples", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--norm", default="linf", choices=["linf", "l2"])
    parser.add_argument("--eps", type=float, default=None, help="default: 8/255 for linf, 0.5 for l2")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "eval_throughput.json"))
    args = parser.parse_args()
    eps = args.eps if args.eps is not None else {"linf": 8 / 255, "l2": 0.5}[args.norm]
    machine = hardware.detect()
    print(f"cpu: {machine.describe()}", flush=True)
    results = []
    rng = np.random.default_rng(0)
    for model_name in args.models.split(","):
        keras.utils.set_random_seed(0)
        network = models.build(model_name, 10, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
        attacker = Attacker(network, args.batch_size, progress=False)
        x = rng.uniform(size=(args.num_examples, 32, 32, 3)).astype(np.float32)
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
            stages={s.name: {"seconds": round(s.seconds, 2), "robust_after": float(s.robust.mean())} for s in stages},
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
