"""``python -m bpm_agents ...`` is the ``bpm`` command line (:mod:`bpm_agents.cli`)."""

import sys

from bpm_agents.cli import main

if __name__ == "__main__":
    sys.exit(main())
