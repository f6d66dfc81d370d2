"""Checkpoint conversion between F1-JAX (Flax) and foreign layouts: see README_CONVERSION.md."""
