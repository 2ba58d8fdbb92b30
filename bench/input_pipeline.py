#!/usr/bin/env python
"""Does the input pipeline keep the training step fed? Images/second of a folder dataset streamed
from disk at 64 and 224 px, next to the training step's: one line per figure, plus a JSON file.

    python bench/input_pipeline.py [--sizes 64,224] [--images 512] [--method pgd_at] \
        [--models preact_resnet18,resnet18_imagenet] [--batch_size 32] [--steps 3]

It writes a synthetic image folder tree of JPEGs into a temporary directory (per size: 64x64 files
as Tiny-ImageNet's, or 500x375 files, a typical ImageNet photo, for 224 px), then for each size:
  pipeline   images/s of robustcl.data.train_dataset alone (read, decode, fit to size, pad-crop-flip,
             batch; every core free for it);
  step       images/s of the real training step on a fixed in-memory batch (no input work);
  step+pipe  images/s of the same step fed by the streaming pipeline, in one fit.
The pipeline keeps the step fed when step+pipe is close to step: the pipeline runs on the same
cores as the step, so the gap is what decoding costs the training run.
"""

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import robustcl  # noqa: F401  (first: it picks TensorFlow's CPU backend, fixed at TensorFlow's import)

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_throughput  # noqa: E402  (the step measurement, shared)

from robustcl import data, hardware, methods  # noqa: E402

SOURCE_SHAPES = {64: (64, 64), 224: (375, 500)}  # (height, width) of the files per target size


def write_jpegs(root, count, height, width, classes=10, seed=0):
    """A folder tree of photo-like JPEGs (smooth colour fields with texture, quality 90)."""
    rng = np.random.default_rng(seed)
    files, labels = [], []
    for i in range(count):
        label = i % classes
        coarse = rng.uniform(0, 255, size=(height // 16 + 1, width // 16 + 1, 3)).astype(np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), np.float32)
        image = np.clip(image + rng.normal(0, 12, size=image.shape), 0, 255).astype(np.uint8)
        path = os.path.join(root, "train", f"class{label}", f"{i:05d}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(image).save(path, quality=90)
        files.append(path)
        labels.append(label)
    return data.Examples(np.asarray(labels, np.int32), files=np.asarray(files))


def pipeline_images_per_s(examples, size, batch_size, batches, views):
    dataset = data.train_dataset(examples, (size, size, 3), batch_size, augment=True, seed=0, views=views)
    iterator = iter(dataset)
    for _ in range(3):  # warm-up: tracing, the prefetch buffer filling
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,224")
    parser.add_argument(
        "--models", default="preact_resnet18,resnet18_imagenet", help="one backbone per size, in the order of --sizes"
    )
    parser.add_argument("--method", default="pgd_at")
    parser.add_argument("--images", type=int, default=512, help="files written per size")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--pipeline_batches", type=int, default=12)
    parser.add_argument("--attack_steps", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "input_pipeline.json"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    model_names = args.models.split(",")
    if len(model_names) != len(sizes):
        parser.error("give one --models entry per --sizes entry")
    unknown = [s for s in sizes if s not in SOURCE_SHAPES]
    if unknown:
        parser.error(f"--sizes: no source file shape for {unknown}; known: {sorted(SOURCE_SHAPES)}")

    machine = hardware.detect()
    print(f"cpu: {machine.describe()}, {os.cpu_count()} cores; float32", flush=True)
    strategy = tf.distribute.get_strategy()
    views = methods.get(args.method).data_views
    results = []
    root = tempfile.mkdtemp(prefix="robustcl-pipeline-")
    try:
        for size, model_name in zip(sizes, model_names):
            height, width = SOURCE_SHAPES[size]
            examples = write_jpegs(os.path.join(root, str(size)), args.images, height, width)
            file_kb = np.mean([os.path.getsize(f) for f in examples.files]) / 1024
            pipeline = pipeline_images_per_s(examples, size, args.batch_size, args.pipeline_batches, views)
            print(
                f"pipeline {size} px ({width}x{height} JPEGs, {file_kb:.0f} KB mean, decode + fit "
                f"+ pad-crop-flip, {views} view(s)): {pipeline:.1f} images/s",
                flush=True,
            )

            def measure(**fed):
                return train_throughput.measure(
                    args.method,
                    model_name,
                    "graph",
                    "float32",
                    args.batch_size,
                    args.attack_steps,
                    args.steps,
                    1,
                    strategy,
                    "global",
                    image_size=size,
                    **fed,
                )

            step = measure()
            print(
                f"step {args.method} {model_name} {size} px batch {args.batch_size}, fixed batch: "
                f"{step['images_per_s']:.2f} images/s",
                flush=True,
            )
            streamed = data.train_dataset(examples, (size, size, 3), args.batch_size, augment=True, seed=0, views=views)
            fed = measure(dataset=streamed)
            print(
                f"step+pipe {args.method} {model_name} {size} px batch {args.batch_size}, fed from "
                f"the JPEG folder: {fed['images_per_s']:.2f} images/s "
                f"({100 * fed['images_per_s'] / step['images_per_s']:.0f}% of the fixed-batch step; "
                f"the pipeline alone is {pipeline / step['images_per_s']:.0f}x the step)",
                flush=True,
            )
            results.append(
                {
                    "image_size": size,
                    "model": model_name,
                    "method": args.method,
                    "batch_size": args.batch_size,
                    "source_file_shape": [height, width],
                    "source_file_kb": file_kb,
                    "views": views,
                    "pipeline_images_per_s": pipeline,
                    "step_images_per_s": step["images_per_s"],
                    "step_fed_by_pipeline_images_per_s": fed["images_per_s"],
                }
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(
            {
                "benchmark": "input_pipeline",
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "machine": platform.machine(),
                "cpu_model": machine.cpu_model,
                "cpu_flags": list(machine.cpu_flags),
                "cpus": os.cpu_count(),
                "attack_steps": args.attack_steps,
                "results": results,
            },
            f,
            indent=2,
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
