"""`python -m mesh run` (the whole mesh, supervised) and `python -m mesh provision`."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mesh",
        description="The embedded chat mesh behind `make run` (configuration: docs/running.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="start NATS, Redis, dynalite and the services; Ctrl-C stops all")
    sub.add_parser("provision", help="create the tables and streams on the running mesh's ports")
    sub.add_parser("check-ports", help="only check that every configured port is free")
    args = parser.parse_args(argv)

    from mesh import run

    if args.command == "run":
        return run.main()
    if args.command == "provision":
        return run.provision_main()
    from mesh import ports

    try:
        ports.preflight()
    except ports.PortConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
