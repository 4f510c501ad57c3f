"""labpy — the LLM Learning Lab's helper package. Pages use it as `import labpy as lab`.

    runs = lab.results("induction")          # stored runs at the largest scale present
    lab.predict(id, statement, check=...)    # before the results
    lab.verdicts(results)                    # after them
"""

__version__ = "0.1.0"

import os as _os

import torch as _torch

# The lab's models are small: on shared 2-core machines one torch thread is 2.5-18x faster than two.
# Pages and the CLI import labpy first, so this is their default; LAB_TORCH_THREADS overrides it.
_torch.set_num_threads(int(_os.environ.get("LAB_TORCH_THREADS", "1")))

from . import plots  # noqa: F401  (registers the offline Altair renderer)
from .experiments import results
from .notebook import claim, config_table, predict, provenance_badge, table, verdicts
from .questions import questions_log, show_questions
from .store import RunStore

__all__ = ["claim", "config_table", "plots", "predict", "provenance_badge", "questions_log", "results", "RunStore", "show_questions",
           "table", "verdicts"]
