"""An orchestrator flavor for tests: it can schedule, and it writes down what it was given instead of running.

Registered by tests/test_schedule.py with
`zenml orchestrator flavor register tests.recording_orchestrator.RecordingOrchestratorFlavor`.
"""

import json
from typing import Dict, Type

from zenml.orchestrators import BaseOrchestrator, BaseOrchestratorConfig, BaseOrchestratorFlavor


class RecordingOrchestratorConfig(BaseOrchestratorConfig):
    """Where to write the record."""

    path: str

    @property
    def is_schedulable(self) -> bool:
        return True


class RecordingOrchestrator(BaseOrchestrator):
    """Records the submitted snapshot's schedule and steps as JSON lines."""

    def submit_pipeline(self, snapshot, stack, base_environment: Dict[str, str],
                        step_environments: Dict[str, Dict[str, str]], placeholder_run=None):
        schedule = snapshot.schedule
        record = {
            "pipeline": snapshot.pipeline_configuration.name,
            "cron": schedule.cron_expression if schedule else None,
            "schedule_name": schedule.name if schedule else None,
            "steps": sorted(snapshot.step_configurations),
            "stack": stack.name,
        }
        with open(self.config.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        return None

    def get_orchestrator_run_id(self) -> str:
        return "recorded"


class RecordingOrchestratorFlavor(BaseOrchestratorFlavor):
    """Flavor `recording`."""

    @property
    def name(self) -> str:
        return "recording"

    @property
    def config_class(self) -> Type[BaseOrchestratorConfig]:
        return RecordingOrchestratorConfig

    @property
    def implementation_class(self) -> Type[BaseOrchestrator]:
        return RecordingOrchestrator
