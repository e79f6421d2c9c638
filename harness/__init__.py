"""Qualification harness for FP8 LLM serving on Intel Gaudi (and its CPU miniature)."""

__version__ = "0.1.0"
__all__ = ["__version__"]
