#!/usr/bin/env python
"""Images/second of the training step, one line per configuration, plus a JSON file.

    python bench/train_throughput.py [--models tiny,resnet18] [--methods pgd_at] \
        [--modes graph,xla] [--precisions float32,mixed_bfloat16] [--steps 5] [--output FILE]

Each configuration builds a fresh model, runs `--warmup` steps (tracing and, with XLA, compiling;
reported as first_step_s) and then times `--steps` steps of the real AdversarialModel.train_step on a
fixed batch of random images (throughput does not depend on pixel values). "xla" compiles the attack
with XLA, as --jit_compile=true does in training.
"""

import argparse
import json
import os
import platform
import time

import keras
import numpy as np
import tensorflow as tf

from robustcl import methods, models
from robustcl.config import AttackConfig
from robustcl.training.model import AdversarialModel


def measure(method_name, model_name, mode, precision, batch_size, attack_steps, steps, warmup):
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    try:
        method = methods.get(method_name)()
        # Contrastive methods train a 128-d embedding head, as their flagfiles configure.
        contrastive = method_name in ("morel", "supcon_margin", "anchor", "contrastive_at")
        network = models.build(model_name, 10, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26),
                               embedding_dim=128 if contrastive else 0,
                               embedding_head="linear" if method_name == "morel" else "mlp")
        attack = AttackConfig(steps=attack_steps)
        model = AdversarialModel(network, method, attack, attack, weight_decay=5e-4,
                                 jit_compile_attack=(mode == "xla"))
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=False)
        rng = np.random.default_rng(0)
        x = rng.uniform(size=(batch_size, 32, 32, 3)).astype("float32")
        y = rng.integers(0, 10, size=batch_size).astype("int32")
        # Two-view methods get their second augmentation, as the data pipeline provides it.
        inputs = (x, x[:, :, ::-1].copy()) if method.data_views == 2 else x
        start = time.perf_counter()
        for _ in range(warmup):
            model.train_on_batch(inputs, y)
        first = time.perf_counter() - start
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            logs = model.train_on_batch(inputs, y, return_dict=True)
            times.append(time.perf_counter() - start)
        assert np.isfinite(logs["loss"]), logs
    finally:
        keras.mixed_precision.set_global_policy("float32")
    step = float(np.median(times))
    return {"method": method_name, "model": model_name, "mode": mode, "precision": precision,
            "batch_size": batch_size, "attack_steps": attack_steps, "steps_timed": steps,
            "step_s_median": step, "step_s_min": float(np.min(times)),
            "images_per_s": batch_size / step, "first_step_s": first}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,resnet18")
    parser.add_argument("--methods", default=",".join(methods.METHODS.names()))
    parser.add_argument("--modes", default="graph,xla")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--attack_steps", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results",
                                                         "train_throughput.json"))
    args = parser.parse_args()
    results = []
    for model_name in args.models.split(","):
        for method_name in args.methods.split(","):
            for mode in args.modes.split(","):
                for precision in args.precisions.split(","):
                    r = measure(method_name, model_name, mode, precision, args.batch_size,
                                args.attack_steps, args.steps, args.warmup)
                    results.append(r)
                    print(f"{r['method']} {r['model']} {r['mode']} {r['precision']}: "
                          f"{r['images_per_s']:.1f} images/s (step {r['step_s_median']:.3f} s, "
                          f"first step {r['first_step_s']:.1f} s)", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"benchmark": "train_throughput", "tensorflow": tf.__version__,
                   "keras": keras.__version__, "machine": platform.machine(),
                   "cpus": os.cpu_count(), "gpus": len(tf.config.list_physical_devices("GPU")),
                   "results": results}, f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
