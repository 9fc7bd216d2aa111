"""The package version (imported by the package, the CLI and the writers; imports nothing)."""

__version__ = "0.1.0"
