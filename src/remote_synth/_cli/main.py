"""The ``remote-synth`` command: the group, logging, and the one place errors become exit codes.

Errors are one line on stderr, never a traceback (``-v`` adds detail); see ``exits`` for the codes.
"""

from __future__ import annotations

import logging
import sys

import click

from .._exceptions import RemoteSynthError
from .adapters import adapters
from .exits import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    REMEDIES,
    GenerationFailed,
    Terminated,
    fail,
    setup_exit_code,
)
from .generate import generate
from .serve import serve


def main() -> None:
    """Console entry point."""
    try:
        cli.main(standalone_mode=False)
        sys.exit(EXIT_OK)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_BAD_INPUT)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        # click turns an interrupt into Abort, keeping it as the cause
        if isinstance(exc, Terminated) or isinstance(exc.__cause__, Terminated):
            fail("terminated", EXIT_TERMINATED)
        fail("interrupted", EXIT_INTERRUPTED)
    except GenerationFailed as exc:
        fail(str(exc), EXIT_FAILURE)
    except RemoteSynthError as exc:
        advice = REMEDIES.get(exc.remedy, "") if exc.remedy is not None else ""
        fail(f"{exc}{advice}", setup_exit_code(exc))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="remote-synth", message="remote-synth %(version)s")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Generate synthetic tables through a vLLM server that serves an NSS LoRA adapter."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)


cli.add_command(serve)
cli.add_command(generate)
cli.add_command(adapters)
