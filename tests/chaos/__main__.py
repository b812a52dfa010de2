"""`python -m tests.chaos [--long] [--seed N] [--minutes M]`: run a profile, print figures.

Without --long, the CI profile runs (every kind of fault once, about a minute and a half).
The seed defaults to a fresh one, printed with the figures so a run can be repeated. Exit
status 0 when no invariant was broken, 1 otherwise, 2 when the host cannot run it (root,
overlayfs, namespaces, the proc connector). Run it from the repository root, as root.
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import sys

import pytest

from tests.chaos.run import LONG, SHORT, run_profile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos",
                                     description="moorage chaos harness")
    parser.add_argument("--long", action="store_true", help="the long profile (random faults)")
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh one")
    parser.add_argument("--minutes", type=float, default=None,
                        help="workload minutes (long profile default: 10)")
    args = parser.parse_args(argv)
    profile = LONG if args.long else SHORT
    if args.minutes is not None:
        profile = dataclasses.replace(profile, minutes=args.minutes)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    try:
        report = run_profile(profile, seed)
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:
        # The shared capability checks speak pytest: say it plainly here.
        print(f"cannot run: {exc}", file=sys.stderr)
        return 2
    print(report.render())
    print()
    print(report.figures())
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
