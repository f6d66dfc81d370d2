"""Checkpoint conversion between f1-jax (Flax) and foreign layouts: importers, the exporter,
the loaders inference reads through, and verification. The commands: docs/conversion.md."""
