"""LightningModules (one per task) and their plain nn.Module components."""
