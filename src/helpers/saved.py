"""A run's saved outputs and the stage objects they rebuild: the one way to read them.

helpers.outputs holds the files (the format, the hashes, the reference cache); this module
adds the conversion of a saved side back into the object its stage compares, so every
comparison function of stage 4 (accuracy parity) and stage 6 (tasks) works on a saved side
unchanged:

    run = saved.open_run("report/latest")            # ConfigError if missing or half-written
    run.hashes, run.input_hashes, run.entries(), run.tensor(stage, role, key), run.meta
    saved.side_run(run, "target")                     # stage 4's SideRun
    saved.task_side(run, "reference")                 # stage 6's SideTasks
"""

from __future__ import annotations

from helpers.outputs import (
    FORMAT,
    INDEX,
    OUTPUTS,
    PARITY,
    TASKS,
    VERSION,
    Entry,
    SavedRun,
    digest,
    file_digest,
    open_run,
    weights_hash,
)
from helpers.stages.accuracy_parity.sides import SIDE_FIELDS, side_run, side_tensors
from helpers.stages.tasks import task_side

__all__ = ["FORMAT", "INDEX", "OUTPUTS", "PARITY", "SIDE_FIELDS", "TASKS", "VERSION", "Entry",
           "SavedRun", "digest", "file_digest", "open_run", "side_run", "side_tensors",
           "task_side", "weights_hash"]
