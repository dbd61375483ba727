#!/usr/bin/env python3
"""CDK entry point: `cdk.json` runs it with any `python3`; it re-runs itself in the project's `.venv`, where the
pinned packages are, and synthesizes the collector stack from context."""

import os
import sys
from pathlib import Path

VENV = Path(__file__).resolve().parent / ".venv"


def main() -> None:
    if Path(sys.prefix).resolve() != VENV.resolve():
        python = VENV / "bin" / "python"
        if not python.exists():
            sys.exit("tradecollector: no .venv here yet: run `make synth` once (it installs the pinned packages), "
                     "then `npx cdk ...` works")
        os.execv(python, [str(python), __file__, *sys.argv[1:]])

    from stacks.application import create_app

    create_app().synth()


if __name__ == "__main__":
    main()
