"""The package version, defined once: pyproject.toml's, read from the installed metadata."""

from importlib import metadata

try:
    __version__ = metadata.version("asru-lab")
except metadata.PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"
