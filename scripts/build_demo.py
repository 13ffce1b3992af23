"""Build (or find in the cache) the demo NSS run directory and print where it is.

    python scripts/build_demo.py [--force]

Trains a tiny Llama base model, its tokenizer and a LoRA adapter on the demo table that ships in
src/remote_synth/demo/data/, seeded, in about two minutes on two CPU cores (needs the cpu extra).
The result is cached in ~/.cache/remote-synth/demo/<digest>/ (REMOTE_SYNTH_CACHE_DIR moves it) and
rebuilt when the tables, the recipe or the builder change.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time

from remote_synth.demo.build import cache_root, ensure_demo_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="drop the cache and build again")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.force:
        shutil.rmtree(cache_root() / "demo", ignore_errors=True)
    started = time.monotonic()
    run = ensure_demo_run()
    print(f"demo run: {run} ({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
