"""ZenML pipelines, and the commands of run.py that start them.

The pipelines load on first use: run.py's commands check a config (and answer --help) without
importing ZenML's steps and the training stack.
"""

import importlib

_PIPELINES = {"batch_inference": "pipelines.batch_inference", "finetune": "pipelines.finetune",
              "monitor": "pipelines.monitor", "online_inference": "pipelines.online_inference"}

__all__ = list(_PIPELINES)


def __getattr__(name: str):
    if name not in _PIPELINES:
        raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
    pipeline = getattr(importlib.import_module(_PIPELINES[name]), name)
    # Importing the module set `pipelines.<name>` to it; the package's name is the pipeline.
    globals()[name] = pipeline
    return pipeline
