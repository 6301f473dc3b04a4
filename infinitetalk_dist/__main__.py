"""``python -m infinitetalk_dist``: the ``infinitetalk-dist`` command."""

import sys

from infinitetalk_dist.launch.cli import main

sys.exit(main())
