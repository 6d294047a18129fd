"""``python -m agent_sandbox.cli``: the same as the ``agent-sandbox`` command."""

import sys

from .main import main

sys.exit(main())
