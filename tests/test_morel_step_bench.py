"""bench/morel_step.py end to end at a tiny size, where ROBUSTCL_REFERENCE_PYTHON names an environment
with the authors' package (CI does not install it): both MOREL steps run, on networks of the same
size, and the figure is the median of the paired step ratios."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_PYTHON = os.environ.get("ROBUSTCL_REFERENCE_PYTHON", "")


@pytest.mark.skipif(
    not REFERENCE_PYTHON,
    reason="the reference side needs ROBUSTCL_REFERENCE_PYTHON: an environment with torch==2.13.0+cpu and "
    "advermorel==0.1.6 (pip install torch==2.13.0+cpu advermorel==0.1.6)",
)
def test_morel_step_bench_times_both_sides_in_pairs(tmp_path):
    output = tmp_path / "morel_step.json"
    command = [
        sys.executable,
        "bench/morel_step.py",
        f"--reference_python={REFERENCE_PYTHON}",
        "--batch_size=4",
        "--attack_steps=1",
        "--steps=2",
        f"--output={output}",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    figures = json.loads(output.read_text())
    ours, theirs = figures["robustcl_step_times_s"], figures["reference_step_times_s"]
    assert len(ours) == len(theirs) == 2 and min(ours + theirs) > 0
    ratios = [r / o for o, r in zip(ours, theirs)]
    assert figures["speedup_over_reference"] == pytest.approx(float(np.median(ratios)))
    assert figures["params"] == 11173962  # CIFAR ResNet-18's trainable parameters, both sides
    assert 0 < figures["robustcl_fraction_of_conv_peak"] and 0 < figures["reference_fraction_of_conv_peak"]
    assert "robustcl / reference speed" in result.stdout and figures["cpu"] in result.stdout


def test_morel_step_bench_refuses_a_missing_reference_python(tmp_path):
    command = [sys.executable, "bench/morel_step.py", f"--reference_python={tmp_path / 'nothing'}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "--reference_python" in result.stderr and "no such file" in result.stderr
