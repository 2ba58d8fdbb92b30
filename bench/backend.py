#!/usr/bin/env python
"""TensorFlow's CPU backends side by side: every method's training step and the evaluation attacks
with the Eigen kernels and with oneDNN, one line per figure, plus a JSON file.

    python bench/backend.py [--models tiny,preact_resnet18_w16] [--methods pgd_at,morel]
        [--backends eigen,onednn_avx2,onednn] [--batch_size 64] [--steps 3]

TensorFlow reads its backend once, at its import, so each backend runs bench/train_throughput.py
and bench/eval_throughput.py in a process of its own with the environment below; their JSON files
are kept beside this one. `onednn_avx2` caps oneDNN at the AVX2 instructions (ONEDNN_MAX_CPU_ISA):
on a newer CPU it stands in for an AVX2-only machine, where TensorFlow's default is Eigen. The
Eigen kernels of the pip wheel use AVX and no newer instructions on any CPU (TensorFlow's start-up
log says so), so `eigen` is what an AVX2-only machine runs today. Each figure's ratio is to `eigen`
on the same configuration; above 1 means the backend is faster.
"""

import argparse
import json
import os
import subprocess
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
BACKENDS = {
    "eigen": {"TF_ENABLE_ONEDNN_OPTS": "0"},
    "onednn_avx2": {"TF_ENABLE_ONEDNN_OPTS": "1", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "onednn": {"TF_ENABLE_ONEDNN_OPTS": "1"},
}


def run(script, backend, arguments, output, resume):
    if resume and os.path.exists(output):  # written by an earlier run of this bench (--resume)
        with open(output) as f:
            found = json.load(f)
        if found.get("arguments") == arguments:
            return found
    env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA")}
    env.update(BACKENDS[backend])
    command = [sys.executable, os.path.join(BENCH, script), *arguments, "--output", output]
    subprocess.run(command, env=env, check=True, stderr=subprocess.DEVNULL)
    with open(output) as f:
        found = json.load(f)
    found["arguments"] = arguments  # what --resume checks before it reuses the file
    with open(output, "w") as f:
        json.dump(found, f, indent=2)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,preact_resnet18_w16")
    parser.add_argument("--methods", default=None, help="default: every registered method")
    parser.add_argument("--backends", default="eigen,onednn_avx2,onednn")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--eval_examples", type=int, default=64)
    parser.add_argument("--output", default=os.path.join(BENCH, "results", "backend.json"))
    parser.add_argument(
        "--resume", action="store_true", help="reuse the figures an interrupted run with these arguments wrote"
    )
    args = parser.parse_args()
    backends = args.backends.split(",")
    for name in backends:
        if name not in BACKENDS:
            parser.error(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    stem = os.path.splitext(os.path.abspath(args.output))[0]
    train_arguments = ["--models", args.models, "--precisions", "float32", "--batch_size", str(args.batch_size)]
    train_arguments += ["--steps", str(args.steps)] + (["--methods", args.methods] if args.methods else [])
    eval_arguments = ["--models", args.models, "--num_examples", str(args.eval_examples)]
    runs = {}
    for backend in backends:
        runs[backend] = {
            "train": run("train_throughput.py", backend, train_arguments, f"{stem}_{backend}_train.json", args.resume),
            "eval": run("eval_throughput.py", backend, eval_arguments, f"{stem}_{backend}_eval.json", args.resume),
        }
        print(
            f"{backend}: cpu {runs[backend]['train']['cpu_model']} backend {runs[backend]['train']['backend']} "
            f"({runs[backend]['train']['backend_origin']}; "
            f"isa cap {runs[backend]['train']['onednn_isa_cap'] or 'none'})",
            flush=True,
        )
    figures = []
    baseline = runs.get("eigen")
    for backend in backends:
        for kind, key, seconds in (("train", ("method", "model"), "step_s"), ("eval", ("attack", "model"), "seconds")):
            for row in runs[backend][kind]["results"]:
                base = None
                if baseline is not None:
                    base = next(r for r in baseline[kind]["results"] if all(r[k] == row[k] for k in key))
                figure = {
                    "backend": backend,
                    "kind": kind,
                    "model": row["model"],
                    "what": row[key[0]],
                    "seconds": row[seconds],
                    "images_per_s": row["images_per_s"],
                    "speedup_over_eigen": base[seconds] / row[seconds] if base else None,
                }
                if kind == "train":
                    figure["fraction_of_conv_peak"] = row["fraction_of_conv_peak"]
                figures.append(figure)
                ratio = f", {figure['speedup_over_eigen']:.2f}x eigen" if base else ""
                peak = f", {100 * figure['fraction_of_conv_peak']:.0f}% of conv peak" if kind == "train" else ""
                print(
                    f"{backend} {kind} {row['model']} {figure['what']}: {row['images_per_s']:.1f} images/s "
                    f"({row[seconds]:.2f} s{peak}){ratio}",
                    flush=True,
                )
    first = runs[backends[0]]["train"]
    with open(args.output, "w") as f:
        json.dump(
            {
                "benchmark": "backend",
                "cpu_model": first["cpu_model"],
                "cpu_flags": first["cpu_flags"],
                "tensorflow": first["tensorflow"],
                "backends": {name: BACKENDS[name] for name in backends},
                "peaks_gflop_s": {name: runs[name]["train"]["peaks_gflop_s"] for name in backends},
                "figures": figures,
            },
            f,
            indent=2,
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
