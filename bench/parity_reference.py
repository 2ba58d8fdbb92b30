#!/usr/bin/env python
"""The reference side of bench/parity.py: trains the parity network with the MOREL authors' own
package (advermorel 0.1.6, PyTorch), in its own environment (see bench/parity.py).

    REFERENCE_PYTHON bench/parity_reference.py --method=morel --run_dir=RUN --data=DATA.npz --init=INIT.npz

Reads the images, the batches of every epoch and the initial weights that bench/parity.py wrote,
trains MOREL (its default MART accuracy term) or the package's MART loss alone, and writes the
trained weights (RUN/reference_weights.npz, torch's names and layouts) and RUN/reference_log.json.

The package assumes CUDA in three places (Tensor.cuda() in its MART and TRADES losses, and
MultiPosConLoss(device="cuda") in its MOREL loss). This script makes those CPU calls before
importing its losses: Tensor.cuda returns the tensor itself, and MultiPosConLoss is built on "cpu".
Nothing of the package is edited or copied.
"""

import argparse
import json
import os
import time

import numpy as np
import torch
from torch import nn

torch.Tensor.cuda = lambda self, *args, **kwargs: self  # the package's MART/TRADES call .cuda()

from advermorel import advermorel as advermorel_module  # noqa: E402  (after the CPU patch)
from advermorel.losses import morel as morel_losses  # noqa: E402
from advermorel.losses.mart import mart_loss  # noqa: E402


_multi_pos_con_init = morel_losses.MultiPosConLoss.__init__


def _on_cpu(self, device=None, temperature=0.1):
    del device  # the package asks for "cuda"
    _multi_pos_con_init(self, "cpu", temperature)


# Its __init__, not the class: the package's own super(MultiPosConLoss, self) must still find it.
morel_losses.MultiPosConLoss.__init__ = _on_cpu


def morel_of(network, last_layer, eps, step_size, attack_steps, model_dir):
    """The package's MOREL around `network` (its classifier the nn.Linear named `last_layer`) with
    its default MART accuracy term and the package's defaults otherwise, training with PGD L-inf eps
    for attack_steps steps of step_size, on the CPU."""
    return advermorel_module.MOREL(
        network,
        last_layer,
        10,
        "cpu",
        accu_obj="mart",
        epsilon=eps,
        train_step_size=step_size,
        train_perturb_steps=attack_steps,
        model_dir=model_dir,
        verbose=False,
    )


class ParityCNN(nn.Module):
    """bench/parity.py's network (its Keras twin is parity.keras_network): normalization inside,
    three conv-BN-ReLU blocks (two max-pooled), global average pooling, a linear classifier `fc`."""

    def __init__(self, mean, std, num_classes=10):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.conv1, self.bn1 = nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.conv2, self.bn2 = nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64)
        self.conv3, self.bn3 = nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        x = (x - self.mean) / self.std
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = nn.functional.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=("morel", "mart"), required=True)
    parser.add_argument("--run_dir", required=True)
    parser.add_argument("--data", required=True, help="images, labels and per-epoch batch order (bench/parity.py)")
    parser.add_argument("--init", required=True, help="initial weights of the network, torch names")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning_rate", type=float, required=True)
    parser.add_argument("--weight_decay", type=float, required=True)
    parser.add_argument("--eps", type=float, required=True)
    parser.add_argument("--step_size", type=float, required=True)
    parser.add_argument("--attack_steps", type=int, required=True)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # the attack's Gaussian start and MOREL's own layers
    data = np.load(args.data)
    images = torch.tensor(data["images"], dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
    labels = torch.tensor(data["labels"], dtype=torch.long)
    batches = data["batches"]  # [epochs, steps, batch] indices into images

    network = ParityCNN(data["mean"].tolist(), data["std"].tolist())
    network.load_state_dict({k: torch.tensor(v) for k, v in np.load(args.init).items()}, strict=False)
    if args.method == "morel":
        morel = morel_of(
            network, "fc", args.eps, args.step_size, args.attack_steps, os.path.join(args.run_dir, "advermorel")
        )
        trained = morel.model
    else:
        trained = network
    optimizer = torch.optim.SGD(
        trained.parameters(), lr=args.learning_rate, momentum=0.9, weight_decay=args.weight_decay
    )
    log = {"epochs": []}
    for epoch, epoch_batches in enumerate(batches):
        trained.train()
        start, losses = time.perf_counter(), []
        for indices in epoch_batches:
            x, y = images[indices], labels[indices]
            optimizer.zero_grad()
            if args.method == "morel":
                loss, _ = morel.get_morel_loss(x, y, optimizer, epoch + 1)
            else:
                loss = mart_loss(trained, x, y, optimizer, args.step_size, args.eps, args.attack_steps, beta=6.0)
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
        log["epochs"].append(
            {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - start}
        )
        print(json.dumps(log["epochs"][-1]), flush=True)
    # Clean logits of the probe images: bench/parity.py checks its Keras copy of these weights on them.
    trained.eval()
    with torch.no_grad():
        probe = torch.tensor(data["probe_images"], dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
        np.save(os.path.join(args.run_dir, "reference_probe_logits.npy"), trained(probe).numpy())
    # The classifier's weights (MOREL wraps the network: encoder = the network without fc).
    state = (
        network.state_dict()
        if args.method == "mart"
        else {
            **{k: v for k, v in morel.model.mod_encoder.state_dict().items()},
            **{f"fc.{k}": v for k, v in morel.model.head_classifier.state_dict().items()},
        }
    )
    np.savez(os.path.join(args.run_dir, "reference_weights.npz"), **{k: v.detach().numpy() for k, v in state.items()})
    with open(os.path.join(args.run_dir, "reference_log.json"), "w") as f:
        json.dump(log, f, indent=2)


if __name__ == "__main__":
    main()
