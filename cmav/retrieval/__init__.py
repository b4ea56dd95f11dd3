"""Retrieval and grounding tools: the embedding index, exact/FAISS search, heatmap pictures.

The models are in :mod:`cmav.models.retrieval`, their training in :mod:`cmav.tasks.retrieval`,
the metrics in :mod:`cmav.metrics.retrieval` / :mod:`cmav.metrics.localization` and the
evaluation in :mod:`cmav.evaluation.retrieval`.
"""
