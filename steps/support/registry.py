"""The model registry of `llm_lora.promotion`, kept in ZenML's Model Control Plane."""

from __future__ import annotations

from datetime import timezone
from pathlib import Path
from typing import Any
from uuid import UUID

from zenml.client import Client
from zenml.exceptions import EntityExistsError
from zenml.models import ModelVersionResponse

from llm_lora.promotion import LockEntry, RegisteredVersion

LOCK_SUFFIX = "--promotion-lock"


def registered(version: ModelVersionResponse) -> RegisteredVersion:
    """A ZenML model version as the gate sees it: its recorded evaluation and run config."""
    metadata = version.run_metadata
    metrics, config = metadata.get("finetuned"), metadata.get("run_config_json")
    return RegisteredVersion(id=version.id, number=version.number, metrics=metrics if isinstance(metrics, dict) else None,
                             config_json=config if isinstance(config, str) else None)


class ZenMLRegistry:
    """One ZenML Model's versions and stages.

    The promotion lock is a ZenML Model named `<model>--promotion-lock`: the store refuses a second model
    of the same name, in SQLite and on a server alike, so the lock holds across processes and machines.
    """

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.client = Client()

    def version(self, name_or_id: str | int | UUID) -> RegisteredVersion:
        """A version by name, number or id."""
        return registered(self.client.get_model_version(self.model_name, name_or_id))

    def production(self) -> RegisteredVersion | None:  # noqa: D102 (Registry)
        try:
            return registered(self.client.get_model_version(self.model_name, "production"))
        except KeyError:
            return None

    def set_stage(self, version: RegisteredVersion, stage: str) -> None:  # noqa: D102 (Registry)
        # force=True moves the current holder of the stage out of it (ZenML keeps one version per stage).
        self.client.get_model_version(self.model_name, version.id).set_stage(stage, force=True)

    def adapter_folder(self, version: RegisteredVersion) -> Path:
        """The LoRA adapter a version's run trained, loaded from the artifact store."""
        return self.client.get_model_version(self.model_name, version.id).get_artifact("lora_adapter").load().directory

    def try_lock(self, holder: str) -> Any | None:  # noqa: D102 (Registry)
        try:
            return self.client.create_model(name=self.model_name + LOCK_SUFFIX,
                                            description=f"promotion in progress: {holder}").id
        except EntityExistsError:
            return None

    def lock_entry(self) -> LockEntry | None:  # noqa: D102 (Registry)
        try:
            held = self.client.get_model(self.model_name + LOCK_SUFFIX)
        except KeyError:
            return None
        return LockEntry(token=held.id, created=held.created.replace(tzinfo=timezone.utc), holder=held.description)

    def unlock(self, token: Any) -> None:  # noqa: D102 (Registry)
        try:
            self.client.delete_model(token)
        except KeyError:
            pass
