"""llm_lora.cpu.cpu_threads: the threads training launches and llama.cpp use."""

import os

import pytest

from llm_lora.cpu import cpu_threads


def test_omp_num_threads_wins(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads() == 3


@pytest.mark.parametrize("value", ["", "0", "two", "-1"])
def test_without_a_usable_omp_num_threads_the_cpu_set_counts(monkeypatch, value):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert cpu_threads() == len(os.sched_getaffinity(0))


def test_the_training_launch_splits_the_threads_between_processes(monkeypatch):
    from llm_lora.config import TrainingConfig
    from steps.train_lora import launch_with_accelerate, train_lora

    captured = {}

    def record(step, **launch):
        captured.update(launch)
        return step

    monkeypatch.setattr("zenml.integrations.huggingface.steps.run_with_accelerate", record)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    entrypoint = train_lora.entrypoint
    try:
        launch_with_accelerate(TrainingConfig(num_processes=2, use_cpu=True))
    finally:
        train_lora.entrypoint = entrypoint
    assert captured["num_cpu_threads_per_process"] == 2 and captured["num_processes"] == 2
