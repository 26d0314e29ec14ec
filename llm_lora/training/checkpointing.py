"""Resumable training: the Trainer's checkpoints published to a durable store, and fetched back after a crash."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import TrainerCallback

from llm_lora.checkpoints import CheckpointStore

logger = logging.getLogger(__name__)


def _step_of(checkpoint: str | None) -> int | None:
    return int(checkpoint.rstrip("/").rsplit("-", 1)[1]) if checkpoint else None


class _PublishCheckpoints(TrainerCallback):
    """Publish every `every`-th saved checkpoint to the durable store (main process only)."""

    def __init__(self, store: CheckpointStore, every: int) -> None:
        self.store = store
        self.every = every

    def on_save(self, args, state, control, **kwargs):  # noqa: D102
        if not state.is_world_process_zero or state.global_step % self.every:
            return
        local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        best = _step_of(state.best_model_checkpoint)
        self.store.publish(local, keep={best} if best is not None else set())
        logger.info("Checkpoint at step %d saved to %s", state.global_step, self.store.root)


def resume_point(store: CheckpointStore, trainer_dir: Path) -> Path | None:
    """Fetch the newest complete checkpoint (and the best one it refers to) into the Trainer's folder.

    Returns:
        The local checkpoint folder to resume from, or None when the store has none.
    """
    step = store.latest()
    if step is None:
        return None
    local = store.fetch(step, trainer_dir)
    state_path = local / "trainer_state.json"
    state = json.loads(state_path.read_text())
    best = _step_of(state.get("best_model_checkpoint"))
    if best is not None and best != step and best in store.steps():
        store.fetch(best, trainer_dir)
    # The state names the best checkpoint by the crashed run's scratch path; point it here.
    state["best_model_checkpoint"] = str(trainer_dir / f"checkpoint-{best}") if best in store.steps() else None
    state_path.write_text(json.dumps(state, indent=2))
    return local
