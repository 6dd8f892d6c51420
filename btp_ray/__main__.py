"""``python -m btp_ray``: the ``btp`` command."""

import sys

from btp_ray.cli import main

sys.exit(main())
