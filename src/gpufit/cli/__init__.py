"""The ``gpufit`` command line: ``fit``, ``hypotest``, ``limit``, ``info``."""

from ._main import main

__all__ = ["main"]
