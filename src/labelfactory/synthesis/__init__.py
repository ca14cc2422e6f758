"""Synthesis: labelled samples in shards, the uncertainty filter, and reading them back
(:class:`SyntheticDataset`, the public dataset of a task's samples; exports in :mod:`.export`)."""

from labelfactory.synthesis.dataset import Sample, SyntheticDataset

__all__ = ["Sample", "SyntheticDataset"]
