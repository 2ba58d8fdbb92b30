#!/usr/bin/env python
"""Our AutoAttack-style cascade against the reference implementation, on the same model and points.

    python bench/reference_check.py --autoattack_dir=PATH/auto-attack --model=RUN|SAVED_MODEL|FILE.keras \
        [--checkpoint=best] [--dataset=cifar10] [--data_dir=DIR] [--num_examples=200] [--norms=linf,l2] \
        [--eps_linf=0.0313725] [--eps_l2=0.5] [--version=standard|plus|rand] [--output=FILE]

The reference is fra31/auto-attack (PyTorch), imported from a checkout the user supplies; it is not
part of this project and needs `torch`. It attacks our TensorFlow network through a torch autograd
function (forward: logits; backward: the vector-Jacobian product from tf.GradientTape), so both
implementations attack exactly the same function. Both run the same AutoAttack version (standard:
APGD-CE, APGD-T with 9 targets, FAB-T with 9 targets, Square with 5000 queries; plus; rand) with
seed 0 and the reference's settings for it (robustcl.evaluation.autoattack); random draws
differ (NumPy/TF against torch), so per-stage robust accuracies agree to sampling noise, not
bit for bit. Prints one line per stage and implementation: robust accuracy after it, its seconds
and, of those, the seconds spent running the model (robustcl's ModelClock; on the reference's
side the same clock around the TF calls its torch module makes), so the attack's own work is the
rest. Ends with the speed ratio (reference seconds / ours) and writes JSON.
"""

import argparse
import json
import os
import platform
import sys
import time

import robustcl  # noqa: F401  (first: it picks TensorFlow's CPU backend, fixed at TensorFlow's import)

import numpy as np
import tensorflow as tf

from robustcl import data, hardware
from robustcl.settings import ConfigError
from robustcl.evaluation import classifiers
from robustcl.evaluation import autoattack
from robustcl.evaluation import run as evaluation_run
from robustcl.evaluation.suite import Attacker, ModelClock


def torch_module(network, clock):
    """The network's logits as a torch module on NCHW tensors, differentiable through TF; `clock`
    times every TF call."""
    import torch

    @clock.timed
    @tf.function(reduce_retracing=True)
    def logits(images):
        return network(images, training=False)["logits"]

    @clock.timed
    @tf.function(reduce_retracing=True)
    def vector_jacobian(images, cotangent):
        with tf.GradientTape() as tape:
            tape.watch(images)
            total = tf.reduce_sum(network(images, training=False)["logits"] * cotangent)
        return tape.gradient(total, images, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def to_tf(t):
        return tf.constant(t.detach().float().permute(0, 2, 3, 1).contiguous().numpy())

    class Logits(torch.autograd.Function):
        @staticmethod
        def forward(ctx, images):
            ctx.save_for_backward(images)
            return torch.from_numpy(logits(to_tf(images)).numpy())

        @staticmethod
        def backward(ctx, cotangent):
            (images,) = ctx.saved_tensors
            grad = vector_jacobian(to_tf(images), tf.constant(cotangent.numpy())).numpy()
            return torch.from_numpy(grad).permute(0, 3, 1, 2).contiguous()

    class Network(torch.nn.Module):
        def forward(self, images):
            return Logits.apply(images)

    return Network()


class _StageLog:
    """Reads the reference's "robust accuracy after <ATTACK>: <x>% (total time <t> s)" lines: per
    stage, the robust accuracy, its seconds and the model clock's seconds since the last stage."""

    def __init__(self, clock):
        self.clock = clock
        self.robust_after, self.seconds, self.model_seconds = {}, {}, {}
        self._total, self._model = 0.0, 0.0

    def log(self, message):
        if "robust accuracy after " in message:
            name, value = message.split("robust accuracy after ")[1].split(": ", 1)
            name = name.strip().lower()
            self.robust_after[name] = float(value.split("%")[0]) / 100
            total = float(value.split("total time ")[1].split(" s")[0])
            self.seconds[name], self._total = total - self._total, total
            self.model_seconds[name], self._model = self.clock.seconds - self._model, self.clock.seconds


def _rounded(value):
    return None if value is None else round(value, 2)


def _figure(value, spec):
    return "n/a" if value is None else format(value, spec)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--autoattack_dir",
        required=True,
        help="checkout of github.com/fra31/auto-attack (holds the autoattack package)",
    )
    parser.add_argument("--model", required=True, help="a robustcl run directory, a SavedModel or a Keras model file")
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"])
    parser.add_argument("--dataset", default=None, help="default: the run's own (needed for other models)")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--num_examples", type=int, default=200)
    parser.add_argument("--norms", default="linf,l2")
    parser.add_argument("--eps_linf", type=float, default=8 / 255)
    parser.add_argument("--eps_l2", type=float, default=0.5)
    parser.add_argument("--batch_size", type=int, default=200)
    parser.add_argument("--version", default="standard", choices=["standard", "plus", "rand"])
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "reference_check.json"))
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.autoattack_dir, "autoattack", "autoattack.py")):
        parser.error(f"--autoattack_dir={args.autoattack_dir} has no autoattack/autoattack.py")
    try:
        import torch
    except ImportError:
        parser.error("the reference needs PyTorch: pip install torch")
    sys.path.insert(0, os.path.abspath(args.autoattack_dir))
    from autoattack import AutoAttack

    model = classifiers.load_path(args.model, args.checkpoint, flag="model")
    network = model.network
    try:
        dataset = evaluation_run.test_dataset(model, args.dataset, args.data_dir)
    except ConfigError as error:
        parser.error(str(error))
    x, y = data.first_test_images(dataset, args.num_examples)
    n = len(x)
    attacker = Attacker(network, args.batch_size, progress=False)
    clean = float(np.mean(attacker.predict(x) == y))
    print(f"cpu: {hardware.detect().describe()}, {os.cpu_count()} cores", flush=True)
    print(f"clean accuracy: {clean:.4f} on {n} test images of {dataset.info.name}", flush=True)
    results = []
    for norm in args.norms.split(","):
        eps = {"linf": args.eps_linf, "l2": args.eps_l2}[norm]
        start = time.perf_counter()
        ours = autoattack.run(attacker, x, y, norm, eps, autoattack.resolve(args.version), seed=0, log=lambda *_: None)
        ours_seconds = time.perf_counter() - start

        reference_clock = ModelClock()
        reference = AutoAttack(
            torch_module(network, reference_clock),
            norm={"linf": "Linf", "l2": "L2"}[norm],
            eps=eps,
            version=args.version,
            device="cpu",
            seed=0,
            verbose=True,
        )
        stage_log = _StageLog(reference_clock)
        reference.logger = reference.apgd.logger = reference.apgd_targeted.logger = stage_log
        start = time.perf_counter()
        reference.run_standard_evaluation(
            torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(),
            torch.from_numpy(y.astype(np.int64)),
            bs=args.batch_size,
        )
        reference_seconds = time.perf_counter() - start
        for stage in ours:
            theirs = stage_log.robust_after.get(stage.name)
            row = {
                "norm": norm,
                "eps": eps,
                "stage": stage.name,
                "num_examples": n,
                "ours_robust_after": float(stage.robust.mean()),
                "reference_robust_after": theirs,
                "ours_seconds": round(stage.seconds, 2),
                "ours_model_seconds": round(stage.model_seconds, 2),
                "reference_seconds": stage_log.seconds.get(stage.name),
                "reference_model_seconds": _rounded(stage_log.model_seconds.get(stage.name)),
            }
            results.append(row)
            print(
                f"{norm} eps {eps:.5g} {stage.name}: robust after ours {row['ours_robust_after']:.4f}, "
                f"reference {_figure(theirs, '.4f')}; seconds ours {stage.seconds:.1f} (model "
                f"{stage.model_seconds:.1f}), reference {_figure(row['reference_seconds'], '.1f')} (model "
                f"{_figure(row['reference_model_seconds'], '.1f')})",
                flush=True,
            )
        results.append(
            {
                "norm": norm,
                "eps": eps,
                "stage": "seconds",
                "ours": round(ours_seconds, 1),
                "reference": round(reference_seconds, 1),
                "speedup": round(reference_seconds / ours_seconds, 2),
            }
        )
        print(
            f"{norm} eps {eps:.5g} seconds: ours {ours_seconds:.1f}, reference {reference_seconds:.1f} "
            f"(reference / ours: {reference_seconds / ours_seconds:.2f}x)",
            flush=True,
        )
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(
            {
                "benchmark": "reference_check",
                "model": args.model,
                "cpu": hardware.detect().describe(),
                "cpus": os.cpu_count(),
                "checkpoint": args.checkpoint,
                "clean_accuracy": clean,
                "torch": torch.__version__,
                "tensorflow": tf.__version__,
                "machine": platform.machine(),
                "results": results,
            },
            f,
            indent=2,
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
