"""The ``compliance`` command line (checks, checklists and evidence come with issue 8)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from compliance import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compliance",
        description="Check ISO 27001:2022 and SOC 2 controls and produce signed evidence.",
    )
    parser.add_argument("--version", action="version", version=f"compliance {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("compliance: no command given; see 'compliance --help'", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
