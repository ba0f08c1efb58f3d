"""illume-trainer: see README.md for what this package holds."""

from .__about__ import __version__

__all__ = ["__version__"]
