"""``python -m udp_datasets.cli ...`` (what ``accelerate launch -m`` and torchrun start)."""

import sys

from .app import main

sys.exit(main())
