"""The package version, in a module of its own: the packages that record it (the store's metadata,
``arclens --version``) import it from here, never from the ``arclens`` package itself, whose
``open_store`` imports the store (no import cycle, lazy or not: tests/test_imports.py)."""

__version__ = "0.1.0"
