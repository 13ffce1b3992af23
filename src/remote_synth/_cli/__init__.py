"""The ``remote-synth`` command line: a thin shell over the library, one module per command.

``main`` (the group and exit codes), ``serve``, ``generate``, ``adapters``; and the shared parts:
``exits`` (codes and remedies), ``options`` (flags derived from the models), ``signals``, ``progress``.
The CLI is the only layer that knows flags and exit codes.
"""

from .main import cli, main

__all__ = ["cli", "main"]
