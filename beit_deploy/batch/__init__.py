"""`beit-deploy batch`: an export over a data set, one row per input, as Parquet (or JSON lines, CSV).

    from beit_deploy.batch import BatchOptions, run_batch
    summary = run_batch(BatchOptions("export/beit-base-patch16-224/224x224", ("photos/",), "out/", engine="ray"))

Two engines give the same rows: `local` (in this process, the runner's batching; nothing extra to install for
JSON lines or CSV) and `ray` (Ray Data actors on a local or remote cluster; the `batch` extra). Layout: inputs.py
(what to run on), rows.py (the table), answer.py (inputs -> rows, on one runner), output.py (the folder, parts,
resume), local.py and ray_engine.py (the engines), job.py (the whole job).
"""

from .job import BatchOptions, BatchSummary, run_batch

__all__ = ["BatchOptions", "BatchSummary", "run_batch"]
