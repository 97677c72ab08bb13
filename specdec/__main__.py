"""``python -m specdec`` and the ``specdec`` console script.

The CLI is imported inside the ``try`` so that Ctrl-C while Python is still
importing it exits 130 quietly too, not with a traceback from inside an import.
"""

import sys


def run() -> int:
    try:
        from specdec.cli import main

        return main()
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(run())
