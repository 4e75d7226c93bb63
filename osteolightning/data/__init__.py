"""Data: sources, the knee phantom, splits, the preprocessed cache, transforms, DataModule."""
