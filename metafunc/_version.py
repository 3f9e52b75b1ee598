"""The package version (one place: the compile cache keys on it, pyproject.toml repeats it)."""

__version__ = "0.1.0"
