"""Simulate raw data: image formation, specimens, the fast generator and the abTEM source."""
