"""Durable training checkpoints: published complete or not at all, found again after a crash.

The Trainer writes a checkpoint folder (adapter, optimizer, scheduler, RNG
states, trainer state with the data position) in its local scratch folder. A
callback then publishes it to the checkpoint store: files first, a `COMPLETE`
marker last. Only folders with the marker count, so a checkpoint cut off by a
crash, a preemption or a SIGKILL is never resumed from.

The store is a folder keyed by model and run settings (see `checkpoint_key`):
a local or mounted path, or any URI the filesystem object understands (the
ZenML step passes the artifact store's, so s3:// or gs:// work in the cloud).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Protocol

MARKER = "COMPLETE"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class FileSystem(Protocol):
    """The few file operations the store needs (zenml.io.fileio provides them for any artifact store)."""

    def exists(self, path: str) -> bool: ...
    def isdir(self, path: str) -> bool: ...
    def listdir(self, path: str) -> list: ...
    def makedirs(self, path: str) -> None: ...
    def copy(self, src: str, dst: str, overwrite: bool = False) -> None: ...
    def rmtree(self, path: str) -> None: ...
    def open(self, path: str, mode: str = "r"): ...


class LocalFileSystem:
    """FileSystem for local and mounted paths."""

    exists = staticmethod(os.path.exists)
    isdir = staticmethod(os.path.isdir)
    listdir = staticmethod(os.listdir)
    rmtree = staticmethod(shutil.rmtree)
    open = staticmethod(open)

    @staticmethod
    def makedirs(path: str) -> None:
        os.makedirs(path, exist_ok=True)

    @staticmethod
    def copy(src: str, dst: str, overwrite: bool = False) -> None:
        if os.path.exists(dst) and not overwrite:
            raise FileExistsError(dst)
        shutil.copyfile(src, dst)


def checkpoint_key(config_parts: list, train_fingerprint: str) -> str:
    """What makes a checkpoint resumable: same model, adapter shape, schedule and training rows.

    Args:
        config_parts: JSON-able settings that change what training computes.
        train_fingerprint: Fingerprint of the tokenized training rows.

    Returns:
        A short hex key.
    """
    text = json.dumps(config_parts, sort_keys=True, default=str) + train_fingerprint
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _name(entry) -> str:
    name = entry.decode() if isinstance(entry, bytes) else str(entry)
    return name.rstrip("/").rsplit("/", 1)[-1]


class CheckpointStore:
    """Complete checkpoints of one training configuration.

    Args:
        root: The store folder for this configuration (local path or URI).
        fs: File operations for `root`.
    """

    def __init__(self, root: str, fs: FileSystem | None = None) -> None:
        self.root = root.rstrip("/")
        self.fs = fs or LocalFileSystem()

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        if not self.fs.exists(self.root):
            return []
        found = []
        for entry in self.fs.listdir(self.root):
            match = _CHECKPOINT.match(_name(entry))
            if match and self.fs.exists(self._path(match.group(0), MARKER)):
                found.append(int(match.group(1)))
        return sorted(found)

    def latest(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        steps = self.steps()
        return steps[-1] if steps else None

    def publish(self, local_checkpoint: Path, keep: set[int] | None = None, keep_last: int = 2) -> None:
        """Copy a finished local checkpoint folder into the store, marker last, then prune.

        Args:
            local_checkpoint: A Trainer `checkpoint-<step>` folder.
            keep: Steps never pruned (the best checkpoint, for keep_best).
            keep_last: How many of the newest complete checkpoints to keep.
        """
        name = local_checkpoint.name
        target = self._path(name)
        if self.fs.exists(target):  # a leftover without marker from a crash, or a re-publish
            self.fs.rmtree(target)
        for path in sorted(local_checkpoint.rglob("*")):
            relative = path.relative_to(local_checkpoint).as_posix()
            if path.is_dir():
                self.fs.makedirs(self._path(name, relative))
            else:
                self.fs.makedirs(self._path(name, *relative.split("/")[:-1]))
                self.fs.copy(str(path), self._path(name, relative), overwrite=True)
        with self.fs.open(self._path(name, MARKER), "w") as handle:
            handle.write(json.dumps({"step": int(_CHECKPOINT.match(name).group(1))}))
        self.prune(keep or set(), keep_last)

    def prune(self, keep: set[int], keep_last: int) -> None:
        """Remove old complete checkpoints and any incomplete folder."""
        complete = self.steps()
        wanted = set(complete[-keep_last:]) | keep
        for entry in self.fs.listdir(self.root):
            match = _CHECKPOINT.match(_name(entry))
            if match and int(match.group(1)) not in wanted:
                self.fs.rmtree(self._path(match.group(0)))

    def fetch(self, step: int, local_dir: Path) -> Path:
        """Copy one complete checkpoint into `local_dir/checkpoint-<step>`."""
        name = f"checkpoint-{step}"
        target = local_dir / name
        self._copy_tree(self._path(name), target)
        (target / MARKER).unlink(missing_ok=True)
        return target

    def _copy_tree(self, source: str, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        for entry in self.fs.listdir(source):
            name = _name(entry)
            path = f"{source}/{name}"
            if self.fs.isdir(path):
                self._copy_tree(path, target / name)
            else:
                self.fs.copy(path, str(target / name), overwrite=True)

    def clear(self) -> None:
        """Remove the store folder (after training finished and its adapter is saved)."""
        if self.fs.exists(self.root):
            self.fs.rmtree(self.root)
