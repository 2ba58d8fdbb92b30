#!/usr/bin/env python
"""Images/second of the training step, as a fraction of the machine's measured peak: one line per
figure, plus a JSON file.

    python bench/train_throughput.py [--models tiny,resnet18] [--methods pgd_at,morel] \
        [--modes graph,xla] [--precisions float32,mixed_bfloat16] [--batch_size 64] [--steps 3]
    python bench/train_throughput.py --replicas 2 --scopes global,replica --models tiny \
        --methods supcon_margin,morel       # the cost of gathering the global batch

It first prints the CPU (model, bfloat16 flags) and what --precision=auto resolves to, then
measures the peak of this machine in the same run: a 2048^3 matmul and a 3x3 convolution of 128
channels on a 32x32 batch, in float32 and bfloat16. Each configuration then builds a fresh model,
runs `--warmup` steps (tracing; reported as first_step_s) and then `--steps` timed steps of the
real AdversarialModel.train_step, all in one `fit` (each step timed by a callback; the median is
reported) on a fixed batch of random images (throughput does not depend on pixel
values). The yardstick, a plain Keras PGD loop in one tf.function on the same network, is timed
on its own per network and precision, and one step of it runs between every two steps of each
method (--no-plain_baseline skips both): the median of the step-by-step ratios of FLOP rates is the
method's figure against it, "at least as fast per forward-backward pass" a ratio >= 1. Timed apart,
the same configuration moved by 10-15% between runs on shared cores; paired, two identical loops
gave 0.985.
A step's GFLOP/s is images/s x FLOPs per image of one step (Method.forward_passes_per_step x
robustcl.models.forward_flops); the fraction is of the convolution peak in the same precision.
A network's convolutions at their own shapes may not reach that peak: each is also timed alone
(forward, gradient to the input, gradient to the filter; --no-conv_ceiling skips it), and a step's
time is printed as a fraction of what its convolutions alone take at those speeds
(Method.passes_per_step says which kernels each pass runs). The peak over that ceiling is what the
kernels lose at these shapes; the rest of the step is its other ops and idle cores.
"xla" compiles the attack with XLA (--jit_compile=true).
With --replicas 2 the CPU is split into 2 logical devices and the step runs under MirroredStrategy,
once per --scopes value (--contrastive_scope).
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

from robustcl import hardware, methods, models
from robustcl.attacks.settings import AttackConfig
from robustcl.training.model import AdversarialModel


def _split_cpu(replicas):
    # Before TensorFlow starts its runtime (importing it does not).
    if replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
        )


def _seconds(fn):
    """Wall-clock seconds of one call of fn."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _fastest(fn, repeats):
    """The fastest of `repeats` timed calls after a warm-up: a peak is the best the machine does
    (the cores are shared, so a median would fold other load into it)."""
    fn()  # warm-up: tracing, allocation
    return float(min(_seconds(fn) for _ in range(repeats)))


class StepTimer(keras.callbacks.Callback):
    """Times each training step inside one fit (fit's own set-up excluded) and, between steps, one
    step of `yardstick` (a callable) where given: the two then run under the same load of these
    shared cores, whose speed drifts by 10-15% between runs, and are compared step by step."""

    def __init__(self, yardstick=None):
        super().__init__()
        self.yardstick = yardstick
        self.times = []
        self.yardstick_times = []

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self.start)
        if self.yardstick is not None:
            self.yardstick_times.append(_seconds(self.yardstick))


def _paired(figures, flops, times, plain_flops, plain_times, batch_size):
    """Adds the plain loop's figures from the steps timed beside the configuration's, and the median
    of the step-by-step ratios of FLOP rates (x plain per forward-backward pass)."""
    ratios = [(flops / t) / (plain_flops / p) for t, p in zip(times, plain_times)]
    figures["plain_images_per_s"] = batch_size / float(np.median(plain_times))
    figures["vs_plain_keras_pgd"] = float(np.median(ratios))


def _figures(
    method, model, mode, precision, replicas, scope, image_size, batch_size, attack_steps, steps, step, first, flops
):
    """One configuration's JSON record: its settings, the median step and FLOP rate."""
    return {
        "method": method,
        "model": model,
        "mode": mode,
        "precision": precision,
        "replicas": replicas,
        "contrastive_scope": scope,
        "image_size": image_size,
        "batch_size": batch_size,
        "attack_steps": attack_steps,
        "steps_timed": steps,
        "step_s": step,
        "images_per_s": batch_size / step,
        "first_step_s": first,
        "gflop_per_image_step": flops / 1e9,
        "gflop_per_s": batch_size * flops / step / 1e9,
    }


def _network(model_name, image_size, **options):
    """A 10-class network for CIFAR-like images of `image_size` (throughput ignores the statistics)."""
    return models.build(model_name, 10, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), (image_size, image_size, 3), **options)


def measure_peaks(repeats=10, dtypes=("float32", "bfloat16")):
    """GFLOP/s of a large matmul and a ResNet-like convolution in each dtype."""
    peaks = {}
    for dtype in dtypes:
        a = tf.random.uniform([2048, 2048], dtype=tf.float32)
        a = tf.cast(a, dtype)
        matmul = tf.function(lambda: tf.matmul(a, a))
        seconds = _fastest(lambda: matmul().numpy(), repeats)
        peaks[f"matmul_{dtype}"] = 2 * 2048**3 / seconds / 1e9
        x = tf.cast(tf.random.uniform([32, 32, 32, 128]), dtype)
        k = tf.cast(tf.random.uniform([3, 3, 128, 128]), dtype)
        conv = tf.function(lambda: tf.nn.conv2d(x, k, 1, "SAME"))
        seconds = _fastest(lambda: conv().numpy(), repeats)
        peaks[f"conv_{dtype}"] = 2 * 32 * 32 * 32 * 9 * 128 * 128 / seconds / 1e9
    return peaks


def _conv_kernels(network):
    """The network's convolutions as (input shape [H, W, C], kernel shape, strides, padding) with
    how many layers share each, in layer order (the first is the one nearest the input)."""
    kernels = {}
    for layer in network.layers:
        if isinstance(layer, keras.layers.Conv2D):
            if tuple(layer.dilation_rate) != (1, 1) or layer.groups != 1 or layer.data_format != "channels_last":
                raise ValueError(f"{layer.name}: the ceiling times plain NHWC convolutions only")
            key = (tuple(layer.input.shape[1:]), tuple(layer.kernel.shape), tuple(layer.strides), layer.padding.upper())
            kernels[key] = kernels.get(key, 0) + 1
    return kernels


def measure_conv_ceiling(network, batch_size, dtype, repeats=5):
    """(seconds, FLOPs) per image of the network's convolutions, each kernel timed alone on this machine
    (fastest of `repeats`, at `batch_size`, in `dtype`): forward, the gradient to the input, the
    gradient to the filter, summed over the layers; plus the first layer's input gradient, which a
    trained pass does not run (nothing before it has weights). What a step would take if its
    convolutions ran at these speeds and everything else took no time: the rest of a step's time is
    its other ops (BatchNorm, activations, casts, the optimizer) and idle cores."""
    seconds = {"forward": 0.0, "input_gradient": 0.0, "filter_gradient": 0.0, "first_input_gradient": 0.0}
    flops = 0
    for index, ((shape, kernel_shape, strides, padding), count) in enumerate(_conv_kernels(network).items()):
        x = tf.cast(tf.random.uniform([batch_size, *shape]), dtype)
        kernel = tf.cast(tf.random.uniform(kernel_shape), dtype)
        y = tf.nn.conv2d(x, kernel, strides, padding)
        dy = tf.cast(tf.random.uniform(y.shape), dtype)
        flops += count * 2 * int(np.prod(y.shape[1:])) * int(np.prod(kernel_shape[:3]))
        strides4 = [1, *strides, 1]
        kernels = {
            "forward": tf.function(lambda x=x, k=kernel: tf.nn.conv2d(x, k, strides4, padding)),
            "input_gradient": tf.function(
                lambda dy=dy, k=kernel: tf.raw_ops.Conv2DBackpropInput(
                    input_sizes=x.shape, filter=k, out_backprop=dy, strides=strides4, padding=padding
                )
            ),
            "filter_gradient": tf.function(
                lambda x=x, dy=dy: tf.raw_ops.Conv2DBackpropFilter(
                    input=x, filter_sizes=kernel_shape, out_backprop=dy, strides=strides4, padding=padding
                )
            ),
        }
        for name, kernel_fn in kernels.items():
            per_image = _fastest(lambda f=kernel_fn: f().numpy(), repeats) / batch_size
            seconds[name] += count * per_image
            if index == 0 and name == "input_gradient":
                seconds["first_input_gradient"] = per_image
    return seconds, flops


def ceiling_seconds(conv_seconds, passes):
    """Seconds per image of a step's convolutions alone (measure_conv_ceiling) for its passes (a
    PassCounts as a dict, as the figures carry it)."""
    passes = methods.PassCounts(**passes)
    forward, to_input, to_filter = (conv_seconds[k] for k in ("forward", "input_gradient", "filter_gradient"))
    trained = forward + to_input - conv_seconds["first_input_gradient"] + to_filter
    return passes.inference * forward + passes.attack * (forward + to_input) + passes.trained * trained


def measure(
    method_name,
    model_name,
    mode,
    precision,
    batch_size,
    attack_steps,
    steps,
    warmup,
    strategy,
    scope,
    image_size=32,
    dataset=None,
    beside_plain=False,
    yardstick=None,
    fused_batchnorm=None,
):
    """One configuration's step time. `dataset` (batches of images and labels) replaces the fixed
    random batch, to time the step fed by a real input pipeline. beside_plain: a step of the plain Keras
    PGD loop (plain_pgd_step) runs between the method's steps, for the paired ratio; `yardstick`, a
    callable, runs there instead (it keeps its own times). Every timed step's seconds are returned as
    step_times_s."""
    if beside_plain and yardstick is not None:
        raise ValueError("one yardstick at a time: beside_plain or yardstick, not both")
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    try:
        method_class = methods.get(method_name)
        with strategy.scope():
            method = method_class(contrastive_scope=scope)
            network = _network(
                model_name,
                image_size,
                embedding_dim=method.embedding_dim,
                embedding_head=method.embedding_head or "mlp",
                synchronized_bn=strategy.num_replicas_in_sync > 1,
                fused_batchnorm=fused_batchnorm,
            )
            attack = AttackConfig(steps=attack_steps)
            model = AdversarialModel(
                network,
                method,
                train_attack=attack,
                val_attack=attack,
                weight_decay=5e-4,
                jit_compile_attack=(mode == "xla"),
            )
            model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=False)
        if dataset is None:
            rng = np.random.default_rng(0)
            x = rng.uniform(size=(batch_size, image_size, image_size, 3)).astype("float32")
            y = rng.integers(0, 10, size=batch_size).astype("int32")
            # Two-view methods get their second augmentation, as the data pipeline provides it.
            inputs = (x, x[:, :, ::-1].copy()) if method.data_views == 2 else x
            dataset = tf.data.Dataset.from_tensors((inputs, y)).repeat()
        plain, plain_flops = (
            plain_pgd_step(model_name, batch_size, attack_steps, image_size) if beside_plain else (None, None)
        )
        timer = StepTimer(plain or yardstick)
        history = model.fit(dataset, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[timer])
        first = sum(timer.times[:warmup])
        step = float(np.median(timer.times[warmup:]))
        loss = history.history["loss"][-1]
        assert np.isfinite(loss), history.history
        flops = models.forward_flops(network) * method.forward_passes_per_step(attack_steps)
        passes = method.passes_per_step(attack_steps)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    figures = _figures(
        method_name,
        model_name,
        mode,
        precision,
        strategy.num_replicas_in_sync,
        scope,
        image_size,
        batch_size,
        attack_steps,
        steps,
        step,
        first,
        flops,
    )
    figures["step_times_s"] = timer.times[warmup:]
    figures["passes"] = passes._asdict()
    if beside_plain:
        _paired(figures, flops, timer.times[warmup:], plain_flops, timer.yardstick_times[warmup:], batch_size)
    return figures


def plain_pgd_step(model_name, batch_size, attack_steps, image_size=32, fused_batchnorm=False):
    """The yardstick a method's step is held to: adversarial training as a user writes it in plain
    Keras, one tf.function per step (PGD L-inf 8/255 with step 2/255 from a uniform random start,
    the network in inference mode for the attack, then cross-entropy on the adversarial batch and an
    SGD step), on the network robustcl builds but with Keras's own layers throughout (fused_batchnorm:
    with robustcl's BatchNormalization instead, the one change between the two), in the global
    precision policy. Returns (run: one step on a fixed random batch, FLOPs per image of a step)."""
    keras.utils.set_random_seed(0)
    network = _network(model_name, image_size, fused_batchnorm=fused_batchnorm)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    optimizer.build(network.trainable_variables)
    eps, step_size = 8 / 255, 2 / 255
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step(x, y):
        x_adv = tf.clip_by_value(x + tf.random.uniform(tf.shape(x), -eps, eps), 0.0, 1.0)
        for _ in range(attack_steps):
            with tf.GradientTape() as tape:
                tape.watch(x_adv)
                loss = cross_entropy(y, network(x_adv, training=False)["logits"])
            x_adv = x_adv + step_size * tf.sign(tape.gradient(loss, x_adv))
            x_adv = tf.clip_by_value(tf.clip_by_value(x_adv, x - eps, x + eps), 0.0, 1.0)
        with tf.GradientTape() as tape:
            loss = cross_entropy(y, network(x_adv, training=True)["logits"])
            scaled = optimizer.scale_loss(loss)
        optimizer.apply(tape.gradient(scaled, network.trainable_variables), network.trainable_variables)
        return loss

    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(size=(batch_size, image_size, image_size, 3)).astype("float32"))
    y = tf.constant(rng.integers(0, 10, size=batch_size).astype("int32"))

    def run():
        loss = float(train_step(x, y))
        assert np.isfinite(loss), loss

    # A forward and an input-gradient backward per attack step, a forward and a full backward for
    # the update, counted as Method.forward_passes_per_step counts them.
    return run, models.forward_flops(network) * (2 * attack_steps + 3)


def measure_plain_pgd_loop(
    model_name, precision, batch_size, attack_steps, steps, warmup, image_size=32, fused_batchnorm=False
):
    """The plain loop's own figures (median of `steps` after `warmup`). With fused_batchnorm, the
    loop with Keras's BatchNormalization runs between its steps, for the paired ratio: what the
    fused layer alone gains."""
    keras.mixed_precision.set_global_policy(precision)
    try:
        run, flops = plain_pgd_step(model_name, batch_size, attack_steps, image_size, fused_batchnorm)
        stock = plain_pgd_step(model_name, batch_size, attack_steps, image_size)[0] if fused_batchnorm else None
        times, stock_times = [], []
        for _ in range(warmup + steps):
            times.append(_seconds(run))
            if stock is not None:
                stock_times.append(_seconds(stock))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    figures = _figures(
        "plain_keras_pgd_fused_bn" if fused_batchnorm else "plain_keras_pgd",
        model_name,
        "graph",
        precision,
        1,
        None,
        image_size,
        batch_size,
        attack_steps,
        steps,
        float(np.median(times[warmup:])),
        float(sum(times[:warmup])),
        flops,
    )
    figures["passes"] = methods.PassCounts(inference=0, attack=attack_steps, trained=1)._asdict()
    if fused_batchnorm:
        _paired(figures, flops, times[warmup:], flops, stock_times[warmup:], batch_size)
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,resnet18")
    parser.add_argument("--methods", default=None, help="default: every registered method")
    parser.add_argument("--modes", default="graph")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--attack_steps", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--scopes", default="global", help="--contrastive_scope values to time")
    parser.add_argument(
        "--plain_baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time a plain Keras PGD loop on each network and precision (the yardstick), and "
        "print each method's GFLOP/s relative to it",
    )
    parser.add_argument(
        "--plain_fused_batchnorm",
        action="store_true",
        help="also time the plain loop with robustcl's fused BatchNormalization (what that layer alone gains)",
    )
    parser.add_argument(
        "--fused_batchnorm",
        choices=("auto", "on", "off"),
        default="auto",
        help="the methods' networks with robustcl's fused BatchNormalization (on), Keras's (off), or as "
        "models.build picks for this machine (auto)",
    )
    parser.add_argument(
        "--conv_ceiling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time each network's convolutions alone (forward, input and filter gradients) and print each "
        "step's time as a fraction of theirs: how far the kernels at this network's shapes allow the peak, "
        "and how much of the step is its other ops (one device only)",
    )
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "train_throughput.json"))
    args = parser.parse_args()
    fused_batchnorm = {"auto": None, "on": True, "off": False}[args.fused_batchnorm]
    _split_cpu(args.replicas)

    machine = hardware.detect()
    auto = hardware.auto_precision(machine)
    print(f"cpu: {machine.describe()}", flush=True)
    print(f"precision auto resolves to: {auto}", flush=True)
    # Only the dtypes timed: oneDNN capped below AVX-512 (bench/backend.py) has no bfloat16 kernels.
    precisions = args.precisions.split(",")
    peaks = measure_peaks(dtypes=["float32"] + (["bfloat16"] if any("bfloat16" in p for p in precisions) else []))
    for name, value in peaks.items():
        print(f"peak {name}: {value:.1f} GFLOP/s", flush=True)
    if args.replicas > 1:
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
    else:
        strategy = tf.distribute.get_strategy()
    method_names = args.methods.split(",") if args.methods else methods.METHODS.names()
    results = []
    ceilings = {}  # (model, precision) -> measure_conv_ceiling's seconds per image

    def report(r):
        peak = peaks["conv_bfloat16" if "bfloat16" in r["precision"] else "conv_float32"]
        r["fraction_of_conv_peak"] = r["gflop_per_s"] / peak
        line = (
            f"{r['method']} {r['model']} {r['mode']} {r['precision']} replicas={r['replicas']} "
            f"scope={r['contrastive_scope']} batch={r['batch_size']}: {r['images_per_s']:.2f} images/s "
            f"(step {r['step_s']:.3f} s, first {r['first_step_s']:.1f} s), {r['gflop_per_s']:.1f} GFLOP/s = "
            f"{100 * r['fraction_of_conv_peak']:.1f}% of the {r['precision']} conv peak"
        )
        conv_seconds = ceilings.get((r["model"], r["precision"]))
        if conv_seconds is not None:
            r["fraction_of_conv_ceiling"] = ceiling_seconds(conv_seconds, r["passes"]) * r["images_per_s"]
            line += f" (its convolutions timed alone: {100 * r['fraction_of_conv_ceiling']:.1f}% of the step)"
        if "vs_plain_keras_pgd" in r:
            line += (
                f"; the plain Keras PGD loop beside it {r['plain_images_per_s']:.2f} images/s: "
                f"{r['vs_plain_keras_pgd']:.2f}x its FLOP rate (per pass; median of step pairs)"
            )
        results.append(r)
        print(line, flush=True)

    beside_plain = args.plain_baseline and args.replicas == 1
    for model_name in args.models.split(","):
        for precision in precisions:
            if args.conv_ceiling and args.replicas == 1:
                dtype = "bfloat16" if "bfloat16" in precision else "float32"
                seconds, flops = measure_conv_ceiling(_network(model_name, 32), args.batch_size, dtype)
                ceilings[model_name, precision] = seconds
                rates = ", ".join(
                    f"{name.replace('_', ' ')} {flops / seconds[name] / 1e9:.1f}"
                    for name in ("forward", "input_gradient", "filter_gradient")
                )
                print(
                    f"conv ceiling {model_name} {dtype} batch={args.batch_size}: {rates} GFLOP/s "
                    f"(this network's convolutions, each kernel timed alone)",
                    flush=True,
                )
            if beside_plain:
                for fused in [False, True] if args.plain_fused_batchnorm else [False]:
                    report(
                        measure_plain_pgd_loop(
                            model_name,
                            precision,
                            args.batch_size,
                            args.attack_steps,
                            args.steps,
                            args.warmup,
                            fused_batchnorm=fused,
                        )
                    )
            for method_name in method_names:
                for mode in args.modes.split(","):
                    for scope in args.scopes.split(","):
                        r = measure(
                            method_name,
                            model_name,
                            mode,
                            precision,
                            args.batch_size,
                            args.attack_steps,
                            args.steps,
                            args.warmup,
                            strategy,
                            scope,
                            beside_plain=beside_plain,
                            fused_batchnorm=fused_batchnorm,
                        )
                        r["fused_batchnorm"] = args.fused_batchnorm
                        report(r)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(
            {
                "benchmark": "train_throughput",
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "machine": platform.machine(),
                "cpu_model": machine.cpu_model,
                "cpu_flags": list(machine.cpu_flags),
                "backend": machine.backend,
                "backend_origin": machine.backend_origin,
                "onednn_isa_cap": machine.onednn_isa_cap,
                "auto_precision": auto,
                "cpus": os.cpu_count(),
                "gpus": len(tf.config.list_physical_devices("GPU")),
                "peaks_gflop_s": peaks,
                "conv_ceilings_s_per_image": {f"{m} {p}": seconds for (m, p), seconds in ceilings.items()},
                "results": results,
            },
            f,
            indent=2,
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
