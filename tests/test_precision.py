"""--precision: auto resolved by the hardware; mixed precision keeps the attack and logits float32;
mixed_float16's loss scaling leaves weight decay as it is in float32."""

import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from robustcl import hardware, methods, models
from robustcl.attacks import OBJECTIVES, attack_from_config
from robustcl.attacks.settings import AttackConfig
from robustcl.training.model import AdversarialModel
from tests.conftest import template_batch


@pytest.mark.parametrize(
    "cpu_flags, capability, expected",
    [
        (("avx512_bf16", "avx512f", "avx2"), None, "mixed_bfloat16"),
        (("amx_bf16", "avx512f", "avx2"), None, "mixed_bfloat16"),
        (("avx2",), None, "float32"),  # bfloat16 emulated: measured 10x slower
        (("avx512f", "avx2"), None, "float32"),
        (("avx2",), (8, 0), "mixed_bfloat16"),
        (("avx2",), (9, 0), "mixed_bfloat16"),
        (("avx2",), (7, 5), "mixed_float16"),
        (("avx2",), (7, 0), "mixed_float16"),
        (("avx512_bf16",), (6, 1), "float32"),  # the GPU trains, and it has no fast half precision
    ],
)
def test_auto_precision_follows_the_hardware(cpu_flags, capability, expected):
    assert hardware.auto_precision(hardware.Hardware("cpu", cpu_flags, capability)) == expected


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse avx2 avx512f "
        "avx512_bf16 sha_ni\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu\n"
    )
    found = hardware.detect(str(cpuinfo))
    assert found.cpu_model == "AMD EPYC 9R14"
    assert found.cpu_flags == ("avx512_bf16", "avx512f", "avx2") and found.cpu_bfloat16
    assert "native CPU bfloat16: yes" in found.describe()
    missing = hardware.detect(str(tmp_path / "absent"))
    assert missing.cpu_model == "unknown" and missing.cpu_flags == () and not missing.cpu_bfloat16


def test_onednn_is_turned_on_unless_the_user_chose(monkeypatch):
    monkeypatch.setattr(hardware, "_backend_origin", hardware._backend_origin)
    environ = {}
    assert hardware.choose_backend(environ, modules={}) == "TF_ENABLE_ONEDNN_OPTS=1 set by robustcl"
    assert environ == {"TF_ENABLE_ONEDNN_OPTS": "1"}
    for choice in ("0", "1"):  # the user's word stands, off included
        environ = {"TF_ENABLE_ONEDNN_OPTS": choice}
        assert hardware.choose_backend(environ, modules={}) == f"TF_ENABLE_ONEDNN_OPTS={choice} set by the user"
        assert environ == {"TF_ENABLE_ONEDNN_OPTS": choice}


def test_tensorflow_imported_first_without_onednn_is_said_not_silent(monkeypatch):
    monkeypatch.setattr(hardware, "_backend_origin", hardware._backend_origin)
    monkeypatch.setattr(hardware, "onednn_enabled", lambda: False)
    environ = {}
    with pytest.warns(UserWarning, match="imported before robustcl.*set TF_ENABLE_ONEDNN_OPTS=1"):
        origin = hardware.choose_backend(environ, modules={"tensorflow": tf})
    assert environ == {} and "imported before robustcl" in origin  # too late to change: not touched
    monkeypatch.setattr(hardware, "onednn_enabled", lambda: True)  # on by TensorFlow's default: nothing to say
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hardware.choose_backend({}, modules={"tensorflow": tf})


def test_this_process_runs_the_backend_robustcl_chose():
    # conftest imports robustcl before TensorFlow, as every script, bench and the server do.
    assert hardware.onednn_enabled() == (os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1")


@pytest.mark.slow
def test_a_fresh_process_gets_onednn_and_says_so():
    environ = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    code = (
        "import json, os, robustcl, tensorflow; from robustcl import hardware; "
        "print(json.dumps([os.environ.get('TF_ENABLE_ONEDNN_OPTS'), hardware.onednn_enabled(), "
        "hardware.startup_line('float32')]))"
    )
    result = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    variable, enabled, line = json.loads(result.stdout.strip().splitlines()[-1])
    assert variable == "1" and enabled is True
    assert line.startswith("precision: float32; machine: ")
    assert "oneDNN kernels on (TF_ENABLE_ONEDNN_OPTS=1 set by robustcl)" in line


def test_bfloat16_attack_has_float32_finite_input_gradients_and_float32_logits():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        network = models.build("tiny", 10, (0.5,) * 3, (0.25,) * 3, embedding_dim=8)
        assert network.get_layer("logits").compute_dtype == "float32"
        conv = next(layer for layer in network.layers if isinstance(layer, keras.layers.Conv2D))
        assert conv.compute_dtype == "bfloat16"  # the body does run in bfloat16
        x, y = template_batch(n=8)
        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(OBJECTIVES.get("ce")(network(x), y))
        grad = tape.gradient(loss, x)
        assert grad.dtype == tf.float32 and np.isfinite(grad.numpy()).all()
        assert float(tf.reduce_max(tf.abs(grad))) > 0
        attack = attack_from_config(AttackConfig(eps=8 / 255, step_size=2 / 255, steps=3))
        x_adv = attack(lambda v: OBJECTIVES.get("ce")(network(v), y), x, tf.constant([0, 1]))
        assert x_adv.dtype == tf.float32
        assert float(tf.reduce_max(tf.abs(x_adv - x))) <= 8 / 255 + 1e-6
        assert float(tf.reduce_max(tf.abs(x_adv - x))) > 4 / 255  # the steps moved the input
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _decay_dominated_step(precision):
    """Weights after one SGD step of standard training whose weight decay dwarfs the loss gradient."""
    keras.mixed_precision.set_global_policy(precision)
    try:
        keras.utils.set_random_seed(0)
        network = models.build("tiny", 10, (0.5,) * 3, (0.25,) * 3)
        before = [w.numpy().astype("float32") for w in network.trainable_weights]
        model = AdversarialModel(
            network, methods.get("standard")(), train_attack=AttackConfig(), val_attack=AttackConfig(), weight_decay=5.0
        )
        model.compile(optimizer=keras.optimizers.SGD(0.01))
        x, y = template_batch(n=16)
        model.train_on_batch(x, y)
        is_scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        return before, [w.numpy().astype("float32") for w in network.trainable_weights], is_scaled
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_mixed_float16_scales_the_loss_and_keeps_weight_decay():
    before, f32, f32_scaled = _decay_dominated_step("float32")
    _, f16, f16_scaled = _decay_dominated_step("mixed_float16")
    assert f16_scaled and not f32_scaled
    # The decay moves each kernel by 0.01 * 5 * w: 5% of its size. Unscaled decay under a loss
    # scale of 32768 would move it by ~0.0002% instead.
    kernel = int(np.argmax([b.size for b in before]))
    f32_move = np.abs(f32[kernel] - before[kernel]).mean()
    f16_move = np.abs(f16[kernel] - before[kernel]).mean()
    assert f32_move > 0.03 * np.abs(before[kernel]).mean()
    assert f16_move == pytest.approx(f32_move, rel=0.05)
