"""``python -m realtime``: start one realtime server process."""

import sys

from realtime.server import main

sys.exit(main())
