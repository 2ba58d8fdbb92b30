"""What the machine computes fast: the precision `--precision=auto` resolves to.

Measured on these machines' CPUs (README, Benchmarks): with native bfloat16 (`avx512_bf16` or
`amx_bf16` in /proc/cpuinfo) mixed_bfloat16 trained PGD-AT on ResNet-18 1.71x faster than float32;
on an AVX2-only CPU it ran 10x slower, since bfloat16 is then emulated. NVIDIA GPUs compute bfloat16
natively from compute capability 8.0 (Ampere); 7.x (Volta, Turing) have float16 tensor cores, used
with loss scaling (mixed_float16). Anything else trains in float32.
"""

import dataclasses
from typing import Optional, Tuple

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclasses.dataclass(frozen=True)
class Hardware:
    cpu_model: str
    cpu_flags: Tuple[str, ...]  # the bfloat16-relevant flags present (BF16_CPU_FLAGS, avx512f, avx2)
    gpu_compute_capability: Optional[Tuple[int, int]]  # of the first GPU; None without a GPU

    @property
    def cpu_bfloat16(self):
        return any(flag in self.cpu_flags for flag in BF16_CPU_FLAGS)

    def describe(self):
        gpu = (
            "no GPU"
            if self.gpu_compute_capability is None
            else "GPU compute capability %d.%d" % self.gpu_compute_capability
        )
        return (
            f"{self.cpu_model} [{' '.join(self.cpu_flags) or 'no avx2/avx512'}], native CPU "
            f"bfloat16: {'yes' if self.cpu_bfloat16 else 'no'}; {gpu}"
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
    return Hardware(model, shown, tuple(capability) if capability else None)


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
