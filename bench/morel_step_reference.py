#!/usr/bin/env python
"""The reference side of bench/morel_step.py: one MOREL training step at a time with the authors' own
package (advermorel 0.1.6, PyTorch) on CIFAR ResNet-18, in the reference's environment (see
bench/parity.py for how to make it).

    REFERENCE_PYTHON bench/morel_step_reference.py --batch_size=64 --attack_steps=10

It builds the network and MOREL (its default MART accuracy term), prints one JSON line describing
itself ({"ready": ..., "params": ...}), then for every line "step" read from stdin runs one step on a
fixed random batch (MOREL's loss with its own PGD attack, backward, SGD) and prints one JSON line
({"seconds": ..., "loss": ...}). It exits at the end of stdin. The CPU patches the package needs are
bench/parity_reference.py's, applied by importing it.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn

# Importing it makes the package's CUDA calls run on the CPU.
from parity_reference import morel_of


class BasicBlock(nn.Module):
    """ResNet v1 basic block, as robustcl.models' `resnet18` builds it (kuangliu/pytorch-cifar's CIFAR
    ResNet-18): 3x3 conv-BN-ReLU, 3x3 conv-BN, a 1x1 conv-BN shortcut where the shape changes."""

    def __init__(self, inputs, filters, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, filters, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters)
        self.conv2 = nn.Conv2d(filters, filters, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(filters)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != filters:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, filters, 1, stride, bias=False), nn.BatchNorm2d(filters))

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18 (3x3 stem, no max-pool, stages 64-128-256-512, global average pooling, a
    linear classifier `linear`); the inputs are normalized inside, as robustcl's networks do."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2471, 0.2435, 0.2616]).view(1, 3, 1, 1))
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        blocks, inputs = [], 64
        for filters, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(inputs, filters, stride), BasicBlock(filters, filters, 1)]
            inputs = filters
        self.blocks = nn.Sequential(*blocks)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1((x - self.mean) / self.std)))
        x = nn.functional.adaptive_avg_pool2d(self.blocks(x), 1)
        return self.linear(torch.flatten(x, 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--attack_steps", type=int, default=10)
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--step_size", type=float, default=2 / 255)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    network = ResNet18()
    classifier_params = sum(p.numel() for p in network.parameters())
    morel = morel_of(
        network, "linear", args.eps, args.step_size, args.attack_steps, os.path.join(tempfile.mkdtemp(), "advermorel")
    )
    optimizer = torch.optim.SGD(morel.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.uniform(size=(args.batch_size, 3, 32, 32)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, 10, size=args.batch_size), dtype=torch.long)
    print(
        json.dumps(
            {
                "ready": True,
                "params": classifier_params,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "onednn": torch.backends.mkldnn.is_available(),
            }
        ),
        flush=True,
    )
    morel.model.train()
    for line in sys.stdin:
        if line.strip() != "step":
            sys.exit(f"error: expected 'step' on stdin, read {line.strip()!r}")
        start = time.perf_counter()
        optimizer.zero_grad()
        loss, _ = morel.get_morel_loss(x, y, optimizer, 1)
        loss.backward()
        optimizer.step()
        seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds, "loss": float(loss.detach())}), flush=True)


if __name__ == "__main__":
    main()
