"""``python -m osteolightning.ensemble`` runs ``osteo-ensemble``."""

from osteolightning.ensemble.cli import main

main()
