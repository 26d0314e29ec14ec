"""Scratch folders for files a step hands to ZenML: removed once ZenML has stored them.

A step that returns a folder (prepared data, a merged model, an adapter) writes
it somewhere first; ZenML copies it into the artifact store after the step
function returns. Left alone, those folders pile up in the temp directory with
every run: a merged 8B model is 16 GB. Here each is deleted when the step ends,
after its outputs are stored, through the same per-step clean-up list that
ZenML's own materializers use for their temporary folders.
"""

import shutil
import tempfile
from pathlib import Path

from zenml import get_step_context


def scratch_folder(prefix: str) -> Path:
    """A new temporary folder that lives until the running step has ended.

    Outside a step (a function called directly), the folder is the caller's to remove.

    Args:
        prefix: Start of the folder's name, e.g. "prepared-data-".
    """
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        context = get_step_context()
    except RuntimeError:
        return folder
    context._cleanup_registry.register_callback(lambda: shutil.rmtree(folder, ignore_errors=True))
    return folder
