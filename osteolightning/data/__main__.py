"""``python -m osteolightning.data`` runs ``osteo-data``."""

import sys

from osteolightning.data.cli import main

sys.exit(main())
