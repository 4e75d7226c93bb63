"""osteolightning: a Lightning + Hydra framework for osteoporosis diagnosis from knee radiographs."""

__version__ = "0.1.0"
