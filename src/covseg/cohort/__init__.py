"""Batches of many cases into one output folder: resumable, shardable, over worker processes,
with a cohort table (``covseg segment``).

- :mod:`.plan`: the cases, their names, a shard's share, the settings (picklable data);
- :mod:`.status`: finished (same model and settings) or failed, read from ``--out``;
- :mod:`.batch`: small pictures several per forward pass;
- :mod:`.engine`: the per-case work (:func:`run_cases`) and the engines that run it;
- :mod:`.table`: ``cohort.csv`` / ``cohort.parquet``;
- :mod:`.run`: :func:`segment_cohort`, the whole batch.
"""

from covseg.cohort.engine import Outcome, run_case, run_cases
from covseg.cohort.plan import Settings, Task
from covseg.cohort.run import CohortRun, segment_cohort

__all__ = ["CohortRun", "Outcome", "Settings", "Task", "run_case", "run_cases", "segment_cohort"]
