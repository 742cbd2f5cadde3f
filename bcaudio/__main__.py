"""``python -m bcaudio``: the ``bcaudio`` command, for a box where the script is not on PATH."""

import sys

from bcaudio.cli import main

sys.exit(main())
