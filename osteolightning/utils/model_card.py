"""Alias of a command, kept for the cards already written: ``python -m
osteolightning.utils.model_card RUN_DIR`` (what every ``MODEL_CARD.md`` written before the run
contract moved to :mod:`osteolightning.runs` tells its reader to run) runs
``python -m osteolightning.runs.model_card RUN_DIR``. It defines nothing and imports nothing
from the package: the card lives in :mod:`osteolightning.runs.model_card`.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("osteolightning.runs.model_card", run_name="__main__", alter_sys=True)
