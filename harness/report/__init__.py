"""Renderers of loaded run records (no measuring, no pytest, no options)."""
