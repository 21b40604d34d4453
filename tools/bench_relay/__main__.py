"""``python -m tillsync.tools.bench_relay``: see the package's docstring."""

from __future__ import annotations

import sys

from tillsync.tools.bench_relay.cli import main

sys.exit(main())
