"""Prepare raw data into training splits: the raw layout, the split engine and noisy-only micrographs."""
