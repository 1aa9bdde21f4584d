"""Placeholder: being written (models helper)."""
