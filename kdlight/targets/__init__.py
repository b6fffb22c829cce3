"""Stores of generated target sequences (a live teacher's cache, a black-box teacher's file)."""

from kdlight.targets.store import StoredSequence, TargetStore

__all__ = ["StoredSequence", "TargetStore"]
