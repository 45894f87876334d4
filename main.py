"""Entry point: with a command, the headless CLI; without one, the desktop app."""

import sys

from engine.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
