#!/usr/bin/env python
"""robustcl's MOREL training step against the authors' own (advermorel 0.1.6, PyTorch), side by side
on the same CIFAR ResNet-18, batch and attack: one line per figure, plus a JSON file.

    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.13.0+cpu advermorel==0.1.6
    python bench/morel_step.py --reference_python=/tmp/ref/bin/python [--batch_size 64] \
        [--attack_steps 10] [--steps 5] [--precision auto]

Both sides: MOREL with its default MART accuracy term, PGD L-inf 8/255 with step 2/255 for
--attack_steps steps, SGD, on a fixed random batch (a step's time does not depend on pixel values).
The reference runs in its own process (bench/morel_step_reference.py, in the reference's
environment) and makes one step whenever this process asks: one reference step runs between every
two robustcl steps, so both run under the same load of the shared cores, and the figure is the
median of the step-by-step ratios (reference seconds / robustcl seconds; above 1, robustcl is
faster). robustcl's precision is what --precision=auto picks on this machine unless given; the
reference computes in float32 (PyTorch's CPU default). The two networks must have the same number
of trainable parameters (checked) for the comparison to be made.
"""

import argparse
import json
import os
import platform
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import robustcl  # noqa: E402, F401  (first: it picks TensorFlow's CPU backend, fixed at TensorFlow's import)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from robustcl import hardware  # noqa: E402
from train_throughput import _network, measure, measure_peaks  # noqa: E402

BENCH = os.path.dirname(os.path.abspath(__file__))


class ReferenceStep:
    """The authors' MOREL step in a process of its own: calling it runs one step there and appends
    the seconds that process measured to `times` (its own clock, so the pipe is not counted)."""

    def __init__(self, python, batch_size, attack_steps):
        self.process = subprocess.Popen(
            [
                python,
                os.path.join(BENCH, "morel_step_reference.py"),
                f"--batch_size={batch_size}",
                f"--attack_steps={attack_steps}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info = self._read()
        self.times = []

    def _read(self):
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise RuntimeError(f"the reference process exited ({code}) without an answer: see its stderr above")
        return json.loads(line)

    def __call__(self):
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        answer = self._read()
        if not np.isfinite(answer["loss"]):
            raise RuntimeError(f"the reference's loss is not finite: {answer}")
        self.times.append(answer["seconds"])

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference_python", required=True, help="Python of the reference's environment")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--attack_steps", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps per side (tracing)")
    parser.add_argument("--precision", default="auto", help="robustcl's precision policy (auto: this machine's)")
    parser.add_argument("--output", default=os.path.join(BENCH, "results", "morel_step.json"))
    args = parser.parse_args()
    if not os.path.isfile(args.reference_python):
        sys.exit(
            f"error: --reference_python={args.reference_python}: no such file (the Python of an "
            "environment with torch==2.13.0+cpu and advermorel==0.1.6)"
        )
    machine = hardware.detect()
    precision = hardware.auto_precision(machine) if args.precision == "auto" else args.precision
    print(f"cpu: {machine.describe()}", flush=True)
    print(f"robustcl precision: {precision}" + (" (auto)" if args.precision == "auto" else ""), flush=True)

    dtype = "bfloat16" if "bfloat16" in precision else "float32"
    peak = measure_peaks(dtypes=[dtype])[f"conv_{dtype}"]
    print(f"peak conv_{dtype}: {peak:.1f} GFLOP/s", flush=True)

    reference = ReferenceStep(args.reference_python, args.batch_size, args.attack_steps)
    try:
        # Trainable parameters: torch keeps BatchNorm's running statistics as buffers, not parameters.
        params = int(sum(np.prod(w.shape) for w in _network("resnet18", 32).trainable_weights))
        if params != reference.info["params"]:
            raise SystemExit(
                f"error: the networks differ: robustcl's resnet18 has {params} parameters, the reference's "
                f"{reference.info['params']}"
            )
        print(
            f"reference: torch {reference.info['torch']}, {reference.info['threads']} threads, "
            f"oneDNN {'available' if reference.info['onednn'] else 'absent'}; CIFAR ResNet-18, {params} "
            "parameters on both sides",
            flush=True,
        )
        ours = measure(
            "morel",
            "resnet18",
            "graph",
            precision,
            args.batch_size,
            args.attack_steps,
            args.steps,
            args.warmup,
            tf.distribute.get_strategy(),
            "global",
            yardstick=reference,
        )
    finally:
        reference.close()
    # The reference stepped once after each of our steps, warm-up steps included.
    ours_times, reference_times = ours["step_times_s"], reference.times[args.warmup :]
    ratios = [r / o for o, r in zip(ours_times, reference_times)]
    result = {
        "benchmark": "morel_step",
        "cpu": machine.describe(),
        "cpu_model": machine.cpu_model,
        "cpu_flags": list(machine.cpu_flags),
        "backend": machine.backend,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "torch": reference.info["torch"],
        "machine": platform.machine(),
        "model": "resnet18",
        "params": params,
        "batch_size": args.batch_size,
        "attack_steps": args.attack_steps,
        "precision": precision,
        "robustcl_step_s": float(np.median(ours_times)),
        "reference_step_s": float(np.median(reference_times)),
        "robustcl_step_times_s": ours_times,
        "reference_step_times_s": reference_times,
        "speedup_over_reference": float(np.median(ratios)),
        "gflop_per_image_step": ours["gflop_per_image_step"],
        f"peak_conv_{dtype}_gflop_s": peak,
    }
    # The same step's FLOPs on both sides (MOREL with the same attack, network and batch), each as a
    # fraction of the convolution peak in robustcl's precision.
    flops = args.batch_size * ours["gflop_per_image_step"]
    for side in ("robustcl", "reference"):
        result[f"{side}_fraction_of_conv_peak"] = flops / result[f"{side}_step_s"] / peak
    for side, dtype_used, times in (("robustcl", precision, ours_times), ("reference", "float32", reference_times)):
        print(
            f"{side} MOREL step ({dtype_used}): {result[f'{side}_step_s']:.2f} s (median of {len(times)}), "
            f"{100 * result[f'{side}_fraction_of_conv_peak']:.1f}% of the {dtype} conv peak",
            flush=True,
        )
    print(f"robustcl / reference speed: {result['speedup_over_reference']:.2f}x (median of step pairs)")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
