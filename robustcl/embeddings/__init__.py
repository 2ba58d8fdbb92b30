"""Embedding-space inspection: statistics, TensorBoard projector data, 2-D projection plots."""

from robustcl.embeddings.space import embedding_space_stats

__all__ = ["embedding_space_stats"]
