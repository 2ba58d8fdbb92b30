#!/usr/bin/env python
"""Points/second of a chunked evaluation split 1 and 2 ways on this machine, and what persisting
chunks costs: one line per figure, plus a JSON file.

    python bench/eval_scale.py [--model tiny] [--num_examples 240] [--chunk_size 60] \
        [--attacks pgd,autoattack]

The network is freshly initialized and every point is labelled with its own prediction, so every
point starts correctly classified and each attack does its full work on all of them. Modes, each
on the same points and plan:
  memory     robustcl.evaluation.evaluate: chunks in memory, nothing written;
  persisted  the same chunks, each written to disk as it finishes (the resumable path);
  mirrored   the chunks spread over 2 logical CPU devices, one attacker each, in one process;
  shards     2 processes (spawned), each evaluating its shard's chunks, then the merge.
Every mode's report must equal the memory mode's point for point (checked, and printed).
"""

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import tempfile
import time

import robustcl  # noqa: F401  (first: it picks TensorFlow's CPU backend, fixed at TensorFlow's import)

import numpy as np


def _setup(model_name, num_examples, seed=0):
    import keras

    from robustcl import models

    keras.utils.set_random_seed(seed)
    network = models.build(model_name, 10, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    x = np.random.default_rng(seed).uniform(size=(num_examples, 32, 32, 3)).astype(np.float32)
    y = np.argmax(network(x, training=False)["logits"], -1).astype(np.int32)
    return network, x, y


def _store(directory, plan, model_name):
    import dataclasses

    from robustcl.evaluation.chunks import ChunkStore

    store = ChunkStore(directory, {"bench_model": model_name, **dataclasses.asdict(plan)})
    store.check_settings()
    return store


def _shard_process(args, plan, directory, shard_index, num_shards):
    from robustcl.evaluation import chunk_starts
    from robustcl.evaluation.run import _evaluate_chunks, _shard_starts

    network, x, y = _setup(args["model"], args["num_examples"])
    store = _store(directory, plan, args["model"])
    starts = _shard_starts(chunk_starts(len(x), plan.chunk_size), num_shards, shard_index)
    _evaluate_chunks(network, x, y, starts, plan, store, [None], progress=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--num_examples", type=int, default=240)
    parser.add_argument("--chunk_size", type=int, default=60)
    parser.add_argument("--batch_size", type=int, default=60)
    parser.add_argument("--attacks", default="pgd,autoattack")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "eval_scale.json"))
    args = parser.parse_args()

    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )

    from robustcl import hardware
    from robustcl.evaluation import Plan, chunk_starts, evaluate, merge
    from robustcl.evaluation.chunks import read_all
    from robustcl.evaluation.run import _devices, _evaluate_chunks

    machine = hardware.detect()
    print(
        f"cpu: {machine.describe()}, {os.cpu_count()} cores; model {args.model}, "
        f"{args.num_examples} points in chunks of {args.chunk_size}, attacks {args.attacks}",
        flush=True,
    )
    plan = Plan(
        attacks=tuple(args.attacks.split(",")), sweep=False, batch_size=args.batch_size, chunk_size=args.chunk_size
    )
    network, x, y = _setup(args.model, args.num_examples)
    names = [str(i) for i in range(10)]
    starts = chunk_starts(len(x), plan.chunk_size)
    results, reports = [], {}
    root = tempfile.mkdtemp(prefix="robustcl-eval-scale-")

    def figure(mode, seconds, report):
        reports[mode] = report
        same = report["per_point"] == reports["memory"]["per_point"]
        results.append(
            {
                "mode": mode,
                "seconds": seconds,
                "points_per_s": len(x) / seconds,
                "worst_case_robust_accuracy": report["worst_case_robust_accuracy"],
                "equals_memory": same,
            }
        )
        print(
            f"{mode}: {len(x) / seconds:.2f} points/s ({seconds:.1f} s; worst case "
            f"{report['worst_case_robust_accuracy']:.3f}; per point equal to memory: {same})",
            flush=True,
        )

    try:
        evaluate(
            network,
            x[: plan.chunk_size],
            y[: plan.chunk_size],
            names,
            attacks=("pgd",),
            sweep=False,
            progress=False,
            batch_size=plan.batch_size,
        )  # warm-up: tracing
        start = time.perf_counter()
        report = evaluate(
            network,
            x,
            y,
            names,
            plan.norm,
            plan.eps,
            plan.attacks,
            sweep=False,
            progress=False,
            batch_size=plan.batch_size,
            chunk_size=plan.chunk_size,
        )
        figure("memory", time.perf_counter() - start, report)

        write_seconds = []
        for mode, devices in (("persisted", [None]), ("mirrored", _devices("mirrored"))):
            directory = os.path.join(root, mode)
            store = _store(directory, plan, args.model)
            if mode == "persisted":  # time the writes themselves: the cost of being resumable
                write = store.write

                def timed_write(chunk, write=write):
                    begin = time.perf_counter()
                    write(chunk)
                    write_seconds.append(time.perf_counter() - begin)

                store.write = timed_write
            start = time.perf_counter()
            _evaluate_chunks(network, x, y, starts, plan, store, devices, progress=False)
            report = merge(read_all(store, starts, 1), y, names, plan)
            figure(
                f"{mode} ({len(devices)} device{'s' if len(devices) > 1 else ''})", time.perf_counter() - start, report
            )

        directory = os.path.join(root, "shards")
        _store(directory, plan, args.model)
        context = multiprocessing.get_context("spawn")
        start = time.perf_counter()
        processes = [context.Process(target=_shard_process, args=(vars(args), plan, directory, i, 2)) for i in range(2)]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
            if process.exitcode:
                raise SystemExit(f"a shard process failed (exit code {process.exitcode})")
        report = merge(read_all(_store(directory, plan, args.model), starts, 2), y, names, plan)
        figure("2 shard processes (incl. their start-up)", time.perf_counter() - start, report)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    persisted = results[1]["seconds"]
    print(
        f"persisting: {sum(write_seconds):.3f} s writing {len(write_seconds)} chunk files "
        f"({100 * sum(write_seconds) / persisted:.2f}% of the persisted run)",
        flush=True,
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(
            {
                "benchmark": "eval_scale",
                "tensorflow": tf.__version__,
                "machine": platform.machine(),
                "cpu_model": machine.cpu_model,
                "cpu_flags": list(machine.cpu_flags),
                "cpus": os.cpu_count(),
                "model": args.model,
                "num_examples": args.num_examples,
                "chunk_size": args.chunk_size,
                "attacks": args.attacks,
                "chunk_write_seconds": write_seconds,
                "results": results,
            },
            f,
            indent=2,
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
