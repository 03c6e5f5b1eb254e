"""The package's version, apart from its public names so that any module may read it."""

__version__ = "0.1.0"
