"""``python -m bpm_agents.sb3``: the peers' training command line (:func:`bpm_agents.sb3.cli.train_main`)."""

import sys

from bpm_agents.sb3.cli import train_main

sys.exit(train_main(sys.argv[1:]))
