"""Training and evaluation: data sets, batching, the training loop, metrics and plots."""
