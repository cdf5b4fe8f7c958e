"""The package version, defined once: ``pyproject.toml`` reads it from here at build time.

Modules inside the package import it from this module rather than from ``siamface`` itself,
so that no lower layer depends on the package root (which re-exports the high-level API).
"""

__version__ = "0.1.0"
