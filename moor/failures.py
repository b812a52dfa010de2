"""The one error printer of `moor`: Docker's text on stderr, the error class's exit code.

Every subcommand runs through `guard`, whether `moor.cli.main` dispatches it or a test
calls a handler directly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

__all__ = ["Handler", "error_text", "guard", "print_error", "translate"]

Handler = Callable[[argparse.Namespace], int]


def error_text(message: str) -> str:
    """Return an error as Docker's CLI prints it."""
    return f"Error response from daemon: {message}"


def print_error(message: str) -> None:
    print(error_text(message), file=sys.stderr)


def translate(exc: BaseException) -> tuple[str, int] | None:
    """Map a failure to (message, exit code), or None to let it raise (a real bug)."""
    from engine.errors import MoorError, Unavailable

    if isinstance(exc, MoorError):
        return exc.message, exc.exit_code
    redis = sys.modules.get("redis")  # only a command that opened Redis can fail on it
    if redis is not None and isinstance(exc, redis.ConnectionError):
        down = Unavailable(f"cannot reach the engine's Redis: {exc}")
        return down.message, down.exit_code
    embedded = sys.modules.get("moor.embedded.errors")
    if embedded is not None and isinstance(exc, embedded.EmbeddedRedisError):
        down = Unavailable(str(exc))
        return down.message, down.exit_code
    return None


def guard(handler: Handler, interrupt_code: int = 130) -> Handler:
    """Wrap a handler: known errors print Docker's text and return their exit code; Ctrl-C
    returns `interrupt_code` (0 for the commands that follow a stream); a closed pipe
    (`moor ps | head -1`) is not an error."""
    def run(args: argparse.Namespace) -> int:
        try:
            return int(handler(args) or 0)
        except KeyboardInterrupt:
            return interrupt_code
        except BrokenPipeError:
            return 0
        except Exception as exc:
            known = translate(exc)
            if known is None:
                raise
            print_error(known[0])
            return known[1]
    run.__doc__ = handler.__doc__
    return run
