#!/usr/bin/env python
"""Expected time per training epoch at the papers' scale, from FLOPs: one line per figure, plus JSON.

    python bench/epoch_estimate.py --throughput bench/results/train_throughput.json \
        [--models resnet18,wrn34_10] [--train_images 49000] [--attack_steps 10]

For each method and network: the FLOPs of one epoch (training images x forward FLOPs of the network
x Method.forward_passes_per_step), the epoch time on the CPU that bench/train_throughput.py measured
(where it measured that method and network), and an ESTIMATE for GPUs: epoch FLOPs / (the GPU's
dense tensor peak x the fraction of its own peak that the measured CPU step reached). Nothing here
ran on a GPU: the estimate assumes a GPU reaches the same fraction of its peak as the CPU did, which
real GPU runs may beat or miss (data loading, kernel launch overhead, memory bandwidth).
"""

import argparse
import json
import os

# Dense tensor-core peaks from the vendors' data sheets, TFLOP/s, in the precision --precision=auto
# picks there (bfloat16 from compute capability 8.0, float16 on 7.x).
GPU_PEAKS = {"V100 (float16)": 125.0, "A100 (bfloat16)": 312.0, "H100 SXM (bfloat16)": 989.0}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--throughput", required=True, help="train_throughput.py JSON (float32)")
    parser.add_argument("--models", default="resnet18,wrn34_10")
    parser.add_argument("--methods", default=None, help="default: every registered method")
    parser.add_argument("--train_images", type=int, default=49000)
    parser.add_argument("--attack_steps", type=int, default=10)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "epoch_estimate.json"))
    args = parser.parse_args()
    from robustcl import methods, models

    with open(args.throughput) as f:
        measured = json.load(f)
    fractions = {
        (r["method"], r["model"]): r for r in measured["results"] if r["precision"] == "float32" and r["replicas"] == 1
    }
    print(
        f"measured on: {measured['cpu_model']} {measured['cpu_flags']}, float32 conv peak "
        f"{measured['peaks_gflop_s']['conv_float32']:.1f} GFLOP/s"
    )
    method_names = args.methods.split(",") if args.methods else methods.METHODS.names()
    results = []
    for model_name in args.models.split(","):
        for method_name in method_names:
            method = methods.get(method_name)()
            network = models.build(
                model_name,
                10,
                (0.5,) * 3,
                (0.25,) * 3,
                embedding_dim=method.embedding_dim,
                embedding_head=method.embedding_head or "mlp",
            )
            step_flops = models.forward_flops(network) * method.forward_passes_per_step(args.attack_steps)
            epoch_flops = step_flops * args.train_images
            row = {
                "method": method_name,
                "model": model_name,
                "gflop_per_image_step": step_flops / 1e9,
                "epoch_pflop": epoch_flops / 1e15,
            }
            # The fraction of peak: this method on this network if measured, else the same method
            # on ResNet-18 (a WRN is at least as efficient per FLOP), else the mean over the
            # methods measured on ResNet-18 (the step is the same network's convolutions).
            source = fractions.get((method_name, model_name)) or fractions.get((method_name, "resnet18"))
            measured_resnet = [r["fraction_of_conv_peak"] for (_, m), r in fractions.items() if m == "resnet18"]
            if source is not None or measured_resnet:
                if source is not None:
                    fraction = source["fraction_of_conv_peak"]
                    row["fraction_from"] = f"{method_name} on {source['model']}"
                else:
                    fraction = sum(measured_resnet) / len(measured_resnet)
                    row["fraction_from"] = f"mean of {len(measured_resnet)} methods on resnet18"
                row["cpu_fraction_of_peak"] = fraction
                cpu_rate = measured["peaks_gflop_s"]["conv_float32"] * fraction * 1e9
                row["cpu_epoch_hours"] = epoch_flops / cpu_rate / 3600
                row["gpu_epoch_seconds_estimate"] = {
                    gpu: epoch_flops / (peak * 1e12 * fraction) for gpu, peak in GPU_PEAKS.items()
                }
            results.append(row)
            line = (
                f"{method_name} {model_name}: {row['gflop_per_image_step']:.1f} GFLOP/image/step, "
                f"{row['epoch_pflop']:.2f} PFLOP/epoch"
            )
            if "cpu_fraction_of_peak" in row:
                line += (
                    f"; CPU {row['cpu_epoch_hours']:.1f} h/epoch at {100 * fraction:.1f}% of peak "
                    f"({row['fraction_from']}); GPU estimate s/epoch: "
                    + ", ".join(f"{gpu} {s:.0f}" for gpu, s in row["gpu_epoch_seconds_estimate"].items())
                )
            print(line, flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(
            {
                "benchmark": "epoch_estimate",
                "throughput_source": args.throughput,
                "gpu_peaks_tflop_s": GPU_PEAKS,
                "train_images": args.train_images,
                "attack_steps": args.attack_steps,
                "results": results,
            },
            f,
            indent=2,
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
