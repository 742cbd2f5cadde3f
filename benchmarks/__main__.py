"""``python -m bcaudio.benchmarks ...``: the same as ``bcaudio bench ...``."""

import sys

from bcaudio.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
