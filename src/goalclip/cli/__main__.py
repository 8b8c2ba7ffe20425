"""``python -m goalclip.cli``: the same entry point as the ``goalclip`` script (used by ``accelerate launch -m``)."""

import sys

from goalclip.cli import main

sys.exit(main())
