"""Entry point: with a command, the headless CLI; without one (or with `app`), the desktop app."""

import sys

APP_FLAGS = ("--demo", "--start")


def run(argv: list[str]) -> int:
    # The app is chosen before importing either side: the CLI never loads Qt, the app parses its own flags.
    if not argv or argv[0] == "app" or argv[0] in APP_FLAGS:
        from app.main import main as app_main

        return app_main(argv[1:] if argv and argv[0] == "app" else argv)
    if argv[0] == "--help-commands":
        argv = ["--help"]
    from engine.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
