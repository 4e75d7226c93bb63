"""Metrics: torchmetrics collections for logging, and the bootstrap evaluation report."""
