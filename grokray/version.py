"""grokray's version (one place; tagged on every run it logs)."""
__version__ = "0.1.0"
