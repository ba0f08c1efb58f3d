"""illume: the umbrella package. Composes the illume packages and provides the `illume` command."""

from .__about__ import __version__

__all__ = ["__version__"]
