"""``python -m remote_synth._cli``: the same command as ``remote-synth``."""

from . import main

main()
