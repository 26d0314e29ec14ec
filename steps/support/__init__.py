"""What the steps share that is not a step: the ZenML side of the registry, secrets and scratch folders."""
