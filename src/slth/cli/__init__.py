"""The ``slth`` command line. Thin: parse, call the library, print, plot.

Every command lives in its own module here and registers itself on ``app`` (or a sub-app).
Errors the user can fix (``SlthError``, bad flags) print one line and exit with status 2.
"""

from __future__ import annotations

import sys

import click

from ..errors import SlthError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="slth", prog_name="slth")
def app():
    """Strong lottery tickets: build, certify, search and measure subnetworks of random
    networks."""


@app.group("bench", context_settings=CONTEXT)
def bench_app():
    """Benchmarks (timed measurements, not tests)."""


@app.group("reproduce", context_settings=CONTEXT)
def reproduce_app():
    """Reproduce the papers' experiments."""


@app.group("study", context_settings=CONTEXT)
def study_app():
    """Studies that measure the constructions against their theorems."""


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit status."""
    args = sys.argv[1:] if argv is None else argv
    try:
        rv = app.main(args=args, prog_name="slth", standalone_mode=False)
        if isinstance(rv, int):
            return rv
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        print("slth: interrupted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("slth: interrupted", file=sys.stderr)
        return 130
    except click.exceptions.NoArgsIsHelpError as e:
        print(e.ctx.get_help())
        return 0
    except click.UsageError as e:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        msg = " ".join(e.format_message().split())
        print(f"slth: error: {msg}{hint}", file=sys.stderr)
        return 2
    except click.ClickException as e:
        print(f"slth: error: {' '.join(e.format_message().split())}", file=sys.stderr)
        return 2
    except SlthError as e:
        print(f"slth: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except MemoryError:
        print("slth: error: out of memory; use a smaller size or more workers/machines",
              file=sys.stderr)
        return 2
    return 0


def _entry() -> None:  # pragma: no cover
    sys.exit(main())


# command modules register themselves on import
from . import bench  # noqa: E402,F401
from . import construct  # noqa: E402,F401
from . import train  # noqa: E402,F401
from . import demo  # noqa: E402,F401
from . import reproduce  # noqa: E402,F401
from . import search  # noqa: E402,F401  (issue 5: search, plant, reproduce pensia-exp2)
from . import study  # noqa: E402,F401  (issue 4: study width, study neurons)
from . import compare  # noqa: E402,F401  (issue 4: compare)
from . import runs  # noqa: E402,F401  (issue 6: distributed runs)
