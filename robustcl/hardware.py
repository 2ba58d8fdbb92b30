"""What the machine computes fast: TensorFlow's CPU kernel backend and the precision
`--precision=auto` resolves to.

Backend: TensorFlow 2.21 runs its oneDNN kernels by default only on CPUs with AVX-512 neural-network
instructions (VNNI, bfloat16, AMX); elsewhere (AVX2-only CPUs) it falls back to its Eigen kernels
unless `TF_ENABLE_ONEDNN_OPTS=1` is in the environment when TensorFlow is imported. Measured on
every method and on evaluation (README, Benchmarks), oneDNN is the faster backend on these CPUs, so
`robustcl/__init__.py` calls `choose_backend()` before anything of robustcl imports TensorFlow: it
sets the variable where the user has not, and a user's own setting (`=0` included) is kept.

Measured on these machines' CPUs (README, Benchmarks): with native bfloat16 (`avx512_bf16` or
`amx_bf16` in /proc/cpuinfo) mixed_bfloat16 trained PGD-AT on ResNet-18 1.71x faster than float32;
on an AVX2-only CPU it ran 10x slower, since bfloat16 is then emulated. NVIDIA GPUs compute bfloat16
natively from compute capability 8.0 (Ampere); 7.x (Volta, Turing) have float16 tensor cores, used
with loss scaling (mixed_float16). Anything else trains in float32.
"""

import dataclasses
import os
import sys
import warnings
from typing import Optional, Tuple

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
# How the backend came to be, for the start-up line; set once by choose_backend().
_backend_origin = "not chosen: robustcl.hardware.choose_backend() has not run"


def choose_backend(environ=None, modules=None):
    """Turns TensorFlow's oneDNN kernels on unless the user chose (the variable is in the
    environment) or TensorFlow is imported already (the variable is read once, at its import).

    Returns how the backend came to be, the phrase `describe()` prints. Where TensorFlow came first
    and runs without oneDNN, warns with the fix: the user gets the slower kernels, but not silently.
    """
    global _backend_origin
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    if ONEDNN_VARIABLE in environ:
        _backend_origin = f"{ONEDNN_VARIABLE}={environ[ONEDNN_VARIABLE]} set by the user"
    elif "tensorflow" in modules:
        _backend_origin = "TensorFlow's default for this CPU (TensorFlow was imported before robustcl)"
        if onednn_enabled() is False:
            warnings.warn(
                "TensorFlow was imported before robustcl, so it runs without its oneDNN kernels on this "
                f"CPU (about 2x slower training here). Import robustcl first, or set {ONEDNN_VARIABLE}=1 "
                "in the environment before Python starts.",
                stacklevel=3,
            )
    else:
        environ[ONEDNN_VARIABLE] = "1"
        _backend_origin = f"{ONEDNN_VARIABLE}=1 set by robustcl"
    return _backend_origin


def onednn_enabled():
    """Whether the imported TensorFlow runs its oneDNN kernels; None before TensorFlow is imported
    (asking would import it) or where this TensorFlow cannot say."""
    if "tensorflow" not in sys.modules:
        return None
    try:
        from tensorflow.python.util import _pywrap_util_port  # TensorFlow's own answer; not public API
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


@dataclasses.dataclass(frozen=True)
class Hardware:
    cpu_model: str
    cpu_flags: Tuple[str, ...]  # the bfloat16-relevant flags present (BF16_CPU_FLAGS, avx512f, avx2)
    gpu_compute_capability: Optional[Tuple[int, int]]  # of the first GPU; None without a GPU
    onednn: Optional[bool] = None  # TensorFlow's oneDNN CPU kernels on; None: unknown
    backend_origin: str = ""  # how the backend came to be (choose_backend)
    onednn_isa_cap: str = ""  # ONEDNN_MAX_CPU_ISA where set: oneDNN uses no newer instructions

    @property
    def backend(self):
        """The CPU kernel backend by name, as benchmarks record it."""
        return {True: "onednn", False: "eigen", None: "unknown"}[self.onednn]

    @property
    def cpu_bfloat16(self):
        return any(flag in self.cpu_flags for flag in BF16_CPU_FLAGS)

    @property
    def fused_batchnorm(self):
        """Whether BatchNorm by TensorFlow's fused kernel is the faster choice here (robustcl.models).
        Measured on the PGD-5 step of PreAct ResNet-18 w16 against Keras's layer
        (docs/results/performance.md): with oneDNN on AVX-512 1.25x (mixed_bfloat16) and 1.07x
        (float32); with oneDNN on an AVX2-only CPU 1.05x, and every method's step faster beside the
        plain loop; with TensorFlow's Eigen kernels 0.90x; with oneDNN capped below the CPU's own
        instructions (ONEDNN_MAX_CPU_ISA=AVX2 on an AVX-512 CPU) 0.92x. GPUs: cuDNN's fused kernel,
        Keras 2's choice there (not measured here)."""
        if self.gpu_compute_capability is not None:
            return True
        cap = self.onednn_isa_cap.upper()
        if "avx512f" in self.cpu_flags:
            capped = cap.startswith(("SSE", "AVX2")) or cap == "AVX"
        else:
            capped = cap.startswith("SSE") or cap == "AVX"
        return bool(self.onednn) and "avx2" in self.cpu_flags and not capped

    def describe(self):
        gpu = (
            "no GPU"
            if self.gpu_compute_capability is None
            else "GPU compute capability %d.%d" % self.gpu_compute_capability
        )
        onednn = {True: "on", False: "off", None: "unknown"}[self.onednn]
        origin = f" ({self.backend_origin})" if self.backend_origin else ""
        if self.onednn and self.onednn_isa_cap:
            origin += f", instructions capped at {self.onednn_isa_cap} by ONEDNN_MAX_CPU_ISA"
        return (
            f"{self.cpu_model} [{' '.join(self.cpu_flags) or 'no avx2/avx512'}], native CPU "
            f"bfloat16: {'yes' if self.cpu_bfloat16 else 'no'}; oneDNN kernels {onednn}{origin}; {gpu}"
        )


def _cpuinfo(path="/proc/cpuinfo"):
    """(model name, set of flags) of the first processor listed; ("unknown", set()) where unreadable."""
    model, flags = "unknown", set()
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def detect(cpuinfo_path="/proc/cpuinfo"):
    """The Hardware of this process (lists GPUs through TensorFlow)."""
    import tensorflow as tf

    model, flags = _cpuinfo(cpuinfo_path)
    shown = tuple(f for f in (*BF16_CPU_FLAGS, "avx512f", "avx2") if f in flags)
    capability = None
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
    return Hardware(
        model,
        shown,
        tuple(capability) if capability else None,
        onednn_enabled(),
        _backend_origin,
        os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
    )


def startup_line(precision=None):
    """What a script prints at start: the machine, TensorFlow's CPU backend and the precision."""
    line = f"machine: {detect().describe()}"
    return line if precision is None else f"precision: {precision}; {line}"


def auto_precision(hardware):
    """The Keras dtype policy --precision=auto chooses for this hardware."""
    capability = hardware.gpu_compute_capability
    if capability is not None:
        if capability >= (8, 0):
            return "mixed_bfloat16"
        if capability >= (7, 0):
            return "mixed_float16"
        return "float32"
    return "mixed_bfloat16" if hardware.cpu_bfloat16 else "float32"
