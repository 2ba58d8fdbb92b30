"""Embedding-space inspection: statistics, TensorBoard projector data, 2-D projection plots.

Imports attacks and below. It sits below training because a training run writes projector
data every N epochs (training.callbacks) as an evaluation does.
"""

from robustcl.embeddings.space import embedding_space_stats

__all__ = ["embedding_space_stats"]
