"""Prune-OPD as pure functions over tensors: drift metrics, bad events and weights, the loss estimators,
the response budget, mini-batches and learning-rate schedules. No models, files or processes.
"""
