"""The skyferry Pulumi program: read config, pick the target, export the standard outputs.

Pulumi runs this with ``main: stacks/``; the target comes from ``skyferry:target`` and the
registry in ``providers/base.py``.  Bad config stops here, naming the key, before any
resource is declared.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Pulumi runs the program from stacks/: make the project root importable (providers/, app/).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from providers.base import current_stack_config, deploy

deploy(current_stack_config())
