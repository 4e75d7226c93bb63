"""Hydra plugin of osteolightning: the nested cross-validation sweeper (``hydra/sweeper=nested_cv``)."""
