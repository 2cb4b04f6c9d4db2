"""The `routing-sidecar` command (also `python -m routing_sidecar`): cli.main, started fast."""

from __future__ import annotations

import sys

from routing_sidecar import dataclass_code


def main() -> int:
    """Run the command line with the recorded dataclass code in use (dataclass_code.py)."""
    dataclass_code.install()
    # Imported after install(): importing the CLI defines most of the dataclasses.
    from routing_sidecar.cli import main as cli_main  # noqa: PLC0415

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
