"""Plain nn.Modules and the backbone factory."""
