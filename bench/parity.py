#!/usr/bin/env python
"""Parity: is robustcl's MOREL the authors' MOREL? Trains MOREL (its default MART accuracy term) and
MART alone with the authors' package (advermorel 0.1.6, PyTorch) and with robustcl, on the same
network, images, batches, initial weights, attack and loss weights, and evaluates every run with
robustcl's evaluation on the same test points.

    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.13.0+cpu advermorel==0.1.6
    python bench/parity.py --data_dir=DIR --reference_python=/tmp/ref/bin/python

Per method and seed, in RUNS_DIR/<method>/seed<S>/:
  the reference   bench/parity_reference.py in the reference's environment: the package's MOREL class
                  (get_morel_loss) or its mart_loss, torch.optim.SGD; its trained weights are copied
                  into the identical Keras network, checked on clean logits of probe images
  robustcl        robustcl.AdversarialModel(the Keras network, method=...) trained on the same batches
Both start from the same initial weights (torch's default initialization, drawn once per seed), see
the same batches in the same order (a permutation per epoch and seed), and use the same SGD (momentum
0.9, weight decay added to the gradient as torch's). Each method's own layers (MOREL's projection and
attention) start from each side's own initialization. Every run is evaluated on the first
--eval_points exact test images: clean, PGD-20 and the AutoAttack standard cascade.

Verdict per method and metric: robustcl's mean accuracy minus the reference's, over the seeds both
have, with its 95% interval (robustcl.reproduce.statistics: point differences averaged over seeds,
BCa bootstrap over the points); "parity" only where the whole interval lies within +-1.5 points.
Finished runs and evaluations are kept; a rerun skips them. The record: RECORD.json and RECORD.md.
"""

import argparse
import fractions
import json
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import robustcl  # noqa: E402  (chooses the CPU backend before TensorFlow is imported)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from robustcl import hardware  # noqa: E402
from robustcl.files import atomic_write_text, read_json  # noqa: E402
from robustcl.reproduce import statistics  # noqa: E402

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
METHODS = ("morel", "mart")
METRICS = (("clean", "clean"), ("pgd", "PGD-20"), ("autoattack", "AutoAttack"))
PARITY_BOUND = 1.5  # points: "parity" where the whole interval lies within +-this
PROBE_IMAGES = 64


def _fraction(text):
    return float(fractions.Fraction(text))


def keras_network(mean, std, num_classes=10):
    """The parity network (bench/parity_reference.py's ParityCNN, layer for layer): normalization
    inside, three conv-BN-ReLU blocks (two max-pooled), global average pooling ("pool"), "fc"."""
    images = keras.Input((32, 32, 3), name="images")
    x = keras.layers.Normalization(mean=list(mean), variance=[s * s for s in std], name="normalize")(images)
    for block, width in enumerate((32, 64, 128), start=1):
        x = keras.layers.Conv2D(width, 3, padding="same", name=f"conv{block}")(x)
        # torch's BatchNorm2d: running statistics updated by 0.1 per step, eps 1e-5.
        x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"bn{block}")(x)
        x = keras.layers.ReLU()(x)
        if block < 3:
            x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(images, keras.layers.Dense(num_classes, name="fc")(x), name="parity_cnn")


def torch_initial_weights(rng, num_classes=10):
    """The network's weights as torch initializes them by default (uniform in +-1/sqrt(fan_in) for
    convolutions and linear layers, weight and bias; BatchNorm 1 and 0), torch names and layouts."""
    weights = {}
    for name, shape in (("conv1", (32, 3, 3, 3)), ("conv2", (64, 32, 3, 3)), ("conv3", (128, 64, 3, 3))):
        bound = 1 / np.sqrt(np.prod(shape[1:]))
        weights[f"{name}.weight"] = rng.uniform(-bound, bound, shape).astype(np.float32)
        weights[f"{name}.bias"] = rng.uniform(-bound, bound, shape[:1]).astype(np.float32)
    for name, width in (("bn1", 32), ("bn2", 64), ("bn3", 128)):
        weights[f"{name}.weight"] = np.ones(width, np.float32)
        weights[f"{name}.bias"] = np.zeros(width, np.float32)
        weights[f"{name}.running_mean"] = np.zeros(width, np.float32)
        weights[f"{name}.running_var"] = np.ones(width, np.float32)
    bound = 1 / np.sqrt(128)
    weights["fc.weight"] = rng.uniform(-bound, bound, (num_classes, 128)).astype(np.float32)
    weights["fc.bias"] = rng.uniform(-bound, bound, (num_classes,)).astype(np.float32)
    return weights


def load_torch_weights(network, weights):
    """Copies torch-named weights into keras_network's layers (NCHW kernels to NHWC)."""
    for name in ("conv1", "conv2", "conv3"):
        kernel = np.transpose(weights[f"{name}.weight"], (2, 3, 1, 0))
        network.get_layer(name).set_weights([kernel, weights[f"{name}.bias"]])
    for name in ("bn1", "bn2", "bn3"):
        network.get_layer(name).set_weights(
            [weights[f"{name}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
        )
    network.get_layer("fc").set_weights([weights["fc.weight"].T, weights["fc.bias"]])


def prepare(args, seed, cifar):
    """RUNS_DIR/seed<S>/: the images, the batches of every epoch and the initial weights, shared by
    both sides and every method at this seed."""
    directory = os.path.join(args.runs_dir, f"seed{seed}")
    data_path, init_path = os.path.join(directory, "data.npz"), os.path.join(directory, "init.npz")
    if not (os.path.isfile(data_path) and os.path.isfile(init_path)):
        os.makedirs(directory, exist_ok=True)
        rng = np.random.default_rng(seed)
        n = args.train_images
        steps = n // args.batch_size  # the last partial batch is dropped, on both sides
        batches = np.stack(
            [rng.permutation(n)[: steps * args.batch_size].reshape(steps, -1) for _ in range(args.epochs)]
        )
        for path, arrays in (
            (
                data_path,
                {
                    "images": cifar.train.images[:n],
                    "labels": cifar.train.labels[:n].astype(np.int64),
                    "batches": batches,
                    "mean": np.asarray(cifar.info.mean, np.float32),
                    "std": np.asarray(cifar.info.std, np.float32),
                    "probe_images": cifar.test.images[:PROBE_IMAGES],
                },
            ),
            (init_path, torch_initial_weights(rng)),
        ):
            np.savez(path + ".tmp.npz", **arrays)
            os.replace(path + ".tmp.npz", path)
    return data_path, init_path


def train_reference(args, method, seed, data_path, init_path, run_dir):
    path = os.path.join(run_dir, "reference_weights.npz")
    if os.path.isfile(path):
        return
    os.makedirs(run_dir, exist_ok=True)
    command = [
        args.reference_python,
        os.path.join(BENCH, "parity_reference.py"),
        f"--method={method}",
        f"--run_dir={run_dir}",
        f"--data={data_path}",
        f"--init={init_path}",
        f"--seed={seed}",
        f"--learning_rate={args.learning_rate}",
        f"--weight_decay={args.weight_decay}",
        f"--eps={args.eps}",
        f"--step_size={args.step_size}",
        f"--attack_steps={args.attack_steps}",
    ]
    start = time.perf_counter()
    with open(os.path.join(run_dir, "reference.log"), "a") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    if code:
        raise RuntimeError(f"the reference's training failed (exit {code}): {os.path.join(run_dir, 'reference.log')}")
    print(f"[{method} seed {seed}] reference trained in {time.perf_counter() - start:.0f} s", flush=True)


def train_robustcl(args, method, seed, data_path, init_path, run_dir):
    path = os.path.join(run_dir, "robustcl.weights.h5")
    if os.path.isfile(path):
        return
    os.makedirs(run_dir, exist_ok=True)
    keras.utils.set_random_seed(seed)
    data = np.load(data_path)
    network = keras_network(data["mean"], data["std"])
    load_torch_weights(network, dict(np.load(init_path)))
    model = robustcl.AdversarialModel(
        network,
        method=method,
        embedding_layer="pool",
        eps=args.eps,
        step_size=args.step_size,
        attack_steps=args.attack_steps,
        weight_decay=args.weight_decay,
        seed=seed,
    )
    model.compile(optimizer=keras.optimizers.SGD(args.learning_rate, momentum=0.9))
    images, labels = tf.constant(data["images"]), tf.constant(data["labels"].astype(np.int32))
    log = {"epochs": []}
    for epoch, batches in enumerate(data["batches"]):
        dataset = tf.data.Dataset.from_tensor_slices(batches).map(
            lambda idx: (tf.cast(tf.gather(images, idx), tf.float32) / 255.0, tf.gather(labels, idx))
        )
        start = time.perf_counter()
        history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)
        log["epochs"].append(
            {"epoch": epoch + 1, "loss": float(history.history["loss"][0]), "seconds": time.perf_counter() - start}
        )
    network.save_weights(path)
    atomic_write_text(os.path.join(run_dir, "robustcl_log.json"), json.dumps(log, indent=2))
    print(f"[{method} seed {seed}] robustcl trained in {sum(e['seconds'] for e in log['epochs']):.0f} s", flush=True)


def evaluate(args, side, method, seed, data_path, run_dir, x_test, y_test):
    """{metric: per-point verdicts} of one trained network, robustcl's evaluation on the test points."""
    path = os.path.join(run_dir, f"{side}_evaluation.json")
    found = read_json(path)
    if found is not None:
        return {k: statistics.unpack(v) for k, v in found["points"].items()}
    data = np.load(data_path)
    network = keras_network(data["mean"], data["std"])
    if side == "reference":
        load_torch_weights(network, dict(np.load(os.path.join(run_dir, "reference_weights.npz"))))
        expected = np.load(os.path.join(run_dir, "reference_probe_logits.npy"))
        got = network.predict(data["probe_images"] / 255.0, verbose=0)
        gap = float(np.abs(got - expected).max())
        if gap > 1e-3 * max(1.0, float(np.abs(expected).max())):
            raise RuntimeError(f"{run_dir}: the Keras copy of the reference's weights differs on clean logits by {gap}")
    else:
        network.load_weights(os.path.join(run_dir, "robustcl.weights.h5"))
        gap = 0.0
    report = robustcl.evaluate(
        network,
        x_test,
        y_test,
        eps=args.eps,
        attacks=("pgd", "autoattack"),
        version="standard",
        pgd_steps=20,
        sweep=False,
        progress=False,
        state_dir=os.path.join(run_dir, f"{side}_evaluation_state"),
        model_name=f"{method} seed {seed} ({side})",
    )
    points = {
        "clean": np.asarray(report["per_point"]["clean_correct"], bool),
        "pgd": np.asarray(report["per_point"]["robust"]["pgd"], bool),
        # The cascade's last stage holds AutoAttack's verdicts (each stage's are cumulative).
        "autoattack": np.asarray(report["per_point"]["robust"][report["autoattack"]["stages"][-1]], bool),
    }
    atomic_write_text(
        path,
        json.dumps(
            {
                "accuracy": {k: float(v.mean()) for k, v in points.items()},
                "probe_logit_gap": gap,
                "warnings": report.warnings,
                "points": {k: statistics.pack(v) for k, v in points.items()},
            },
            indent=2,
        ),
    )
    print(f"[{method} seed {seed}] {side}: " + ", ".join(f"{k} {v.mean():.3f}" for k, v in points.items()), flush=True)
    return points


def verdict(low, high):
    if -PARITY_BOUND <= low and high <= PARITY_BOUND:
        return "parity"
    if low > PARITY_BOUND or high < -PARITY_BOUND:
        return "differs"
    return "not resolved"


def _mean_percent(by_seed):
    return f"{100 * np.mean(list(by_seed.values())):.1f}" if by_seed else "-"


def _train_seconds(run_dir, side):
    log = read_json(os.path.join(run_dir, f"{side}_log.json"), {"epochs": []})
    return round(sum(e["seconds"] for e in log["epochs"]), 1) or None


def record(args, results, machine, software):
    """RECORD.json ({protocol, cells, parity}) and RECORD.md from the finished evaluations."""
    cells, parity, lines = [], [], []
    for method in METHODS:
        sides = results.get(method, {})
        for side in ("robustcl", "reference"):
            for seed, points in sorted(sides.get(side, {}).items()):
                run_dir = os.path.join(args.runs_dir, method, f"seed{seed}")
                cells.append(
                    {
                        "name": method,
                        "method": method,
                        "seed": seed,
                        "implementation": side,
                        "clean": float(points["clean"].mean()),
                        "pgd20": float(points["pgd"].mean()),
                        "autoattack": float(points["autoattack"].mean()),
                        "eval_points_pgd": int(points["pgd"].size),
                        "eval_points_aa": int(points["autoattack"].size),
                        "train_seconds": _train_seconds(run_dir, side),
                    }
                )
        for metric, label in METRICS:
            ours = {s: v[metric] for s, v in sides.get("robustcl", {}).items()}
            theirs = {s: v[metric] for s, v in sides.get("reference", {}).items()}
            row = {"method": method, "metric": metric, "seeds": sorted(set(ours) & set(theirs))}
            if row["seeds"]:
                found = statistics.compare(ours, theirs, min_seeds=1)
                row.update({k: found[k] for k in ("diff", "ci_low", "ci_high", "points")})
                complete = len(row["seeds"]) >= len(args.seeds)
                row["verdict"] = verdict(found["ci_low"], found["ci_high"]) if complete else "pending"
            else:
                row.update({"diff": None, "ci_low": None, "ci_high": None, "verdict": "pending"})
            parity.append(row)
            interval = f"{row['diff']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]" if row["seeds"] else "-"
            lines.append(
                f"| {method} | {label} | {_mean_percent(ours)} | {_mean_percent(theirs)} | {interval} | "
                f"{len(row['seeds'])} | {row['verdict']} |"
            )
    network = keras_network((0.5,) * 3, (0.25,) * 3)
    protocol = {
        "model": "parity_cnn: conv 32-64-128 (3x3, BatchNorm, ReLU; max-pool after the first two), global "
        "average pooling, linear; normalization inside; torch's default initialization, the same weights on "
        "both sides",
        "params": sum(
            int(w.numpy().size) for layer in network.layers if layer.name != "normalize" for w in layer.weights
        ),
        "train_examples": args.train_images,
        "epochs": args.epochs,
        "precision": "float32",
        "cpu": machine,
        "software": software,
        "batch_size": args.batch_size,
        "optimizer": f"SGD lr {args.learning_rate}, momentum 0.9, weight decay {args.weight_decay} (added to the "
        "gradient), the same batches in the same order on both sides",
        "attack": f"L-inf PGD-{args.attack_steps}, eps {args.eps:.5f}, step {args.step_size:.5f}, "
        "start x + 0.001 N(0, 1), BatchNorm in inference mode",
        "morel": "advermorel's defaults: k (0.1, 0.9), a (0, 0), gamma 2e-5, alpha 1e-5, embed_dim 128, 2 heads, "
        "accuracy term MART with beta 6",
        "evaluation": f"robustcl.evaluate on the first {args.eval_points} test images (exact pixels): clean, "
        "PGD-20, AutoAttack standard",
        "seeds": list(args.seeds),
        "parity_bound_points": PARITY_BOUND,
    }
    atomic_write_text(
        args.record + ".json", json.dumps({"protocol": protocol, "cells": cells, "parity": parity}, indent=2)
    )
    text = [
        "# Parity: robustcl's MOREL and MART against the authors' package (advermorel 0.1.6)",
        "",
        "Written by `python bench/parity.py` (its docstring says how both sides are set up alike).",
        "",
        "| protocol | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in protocol.items()],
        "",
        "Accuracy in % (mean over seeds); difference robustcl minus reference in points with its 95%",
        "interval (per-point differences averaged over the seeds, BCa bootstrap over the points: it",
        "measures the draw of test points, not other training seeds); **parity** only where the whole",
        f"interval lies within +-{PARITY_BOUND} points, **differs** where it lies wholly outside,",
        "**pending** until every seed of both sides is evaluated.",
        "",
        "| method | metric | robustcl | reference | difference [95% interval] | seeds | verdict |",
        "|---|---|---|---|---|---|---|",
        *lines,
        "",
    ]
    atomic_write_text(args.record + ".md", "\n".join(text))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True, help="CIFAR-10 in the official layout (archive or folder)")
    parser.add_argument("--reference_python", default="", help="Python of the reference's environment")
    parser.add_argument("--runs_dir", default="runs/parity")
    parser.add_argument("--record", default=os.path.join(REPO, "docs", "results", "morel_parity"))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--train_images", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=0.05)
    parser.add_argument("--weight_decay", type=float, default=5e-4)
    parser.add_argument("--eps", type=_fraction, default=8 / 255)
    parser.add_argument("--step_size", type=_fraction, default=2 / 255)
    parser.add_argument("--attack_steps", type=int, default=10)
    parser.add_argument("--eval_points", type=int, default=1000)
    parser.add_argument("--record_only", action="store_true", help="write the record from finished evaluations")
    parser.add_argument(
        "--sides",
        default="reference,robustcl",
        help="which implementations to train and evaluate (robustcl alone needs no reference environment)",
    )
    args = parser.parse_args()
    args.seeds = tuple(int(s) for s in args.seeds.split(","))
    methods = tuple(args.methods.split(","))
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        sys.exit(f"error: --methods: unknown {', '.join(unknown)}; known: {', '.join(METHODS)}")
    sides = tuple(args.sides.split(","))
    if set(sides) - {"reference", "robustcl"} or not sides:
        sys.exit(f"error: --sides: reference and/or robustcl, got {args.sides!r}")
    if "reference" in sides and not args.record_only and not os.path.isfile(args.reference_python):
        sys.exit("error: --reference_python: the Python of an environment with torch==2.13.0+cpu and advermorel==0.1.6")
    machine = f"{hardware.detect().describe()}, {os.cpu_count()} cores"
    software = f"Python {platform.python_version()}, TensorFlow {tf.__version__}, Keras {keras.__version__}"
    print(machine, "|", software, flush=True)

    cifar = robustcl.data.load_dataset("cifar10", data_dir=args.data_dir)
    x_test = cifar.test.images[: args.eval_points] / np.float32(255)
    y_test = cifar.test.labels[: args.eval_points]
    results = {}
    for seed in args.seeds:
        data_path, init_path = prepare(args, seed, cifar)
        for method in methods:
            run_dir = os.path.join(args.runs_dir, method, f"seed{seed}")
            for side, train in (("reference", train_reference), ("robustcl", train_robustcl)):
                if side not in sides:
                    continue
                done = os.path.isfile(os.path.join(run_dir, f"{side}_evaluation.json"))
                if args.record_only and not done:
                    continue
                if not done:
                    train(args, method, seed, data_path, init_path, run_dir)
                points = evaluate(args, side, method, seed, data_path, run_dir, x_test, y_test)
                results.setdefault(method, {}).setdefault(side, {})[seed] = points
                record(args, results, machine, software)
    record(args, results, machine, software)
    print(f"record: {args.record}.md", flush=True)


if __name__ == "__main__":
    main()
