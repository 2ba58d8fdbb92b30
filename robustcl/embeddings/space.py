"""Statistics of an embedding space: how clean and adversarial views and classes sit in it."""

import numpy as np


def _unit(x):
    x = np.asarray(x, np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def embedding_space_stats(clean, adversarial, labels):
    """Mean cosines over a set of examples (float64):

      clean_adv_cosine    mean over examples of cos(clean_i, adversarial_i)
      intra_class_cosine  mean over pairs i != j of the same class of cos(clean_i, clean_j)
      inter_class_cosine  mean over pairs of different classes of cos(clean_i, clean_j)
      margin              intra_class_cosine - inter_class_cosine
    A statistic without any pair (e.g. every class a single example) is NaN.
    """
    c, a = _unit(clean), _unit(adversarial)
    labels = np.asarray(labels).reshape(-1)
    cosines = c @ c.T
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)

    def mean(mask):
        return float(cosines[mask].mean()) if mask.any() else float("nan")

    intra, inter = mean(same & off_diagonal), mean(~same)
    return {
        "clean_adv_cosine": float(np.sum(c * a, axis=1).mean()) if len(c) else float("nan"),
        "intra_class_cosine": intra,
        "inter_class_cosine": inter,
        "margin": intra - inter,
    }
