"""The package version, read from the installed distribution metadata.

The one source is Cargo.toml's ``[workspace.package] version``: pyproject.toml declares the version
``dynamic`` and maturin writes the binding crate's version into the metadata (``_core.__version__``
is the same string, compiled in).
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__: str = metadata.version("ciotrack")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
