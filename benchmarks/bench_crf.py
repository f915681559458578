"""DenseCRF loss benchmark: the same as `python -m rloss bench crf` (see README.md here)."""

import sys

from rloss.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "crf", *sys.argv[1:]]))
