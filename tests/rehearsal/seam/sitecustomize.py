"""Loads the rehearsal seam into a workload process, and only there.

Python imports ``sitecustomize`` at start-up from its path; this directory is on the path
of the rehearsal's workload processes alone (``PYTHONPATH``), and even there nothing
happens unless ``SKYFERRY_REHEARSAL_SEAM`` names the seam's config.  The image, the
chart, the stacks and ``skyferry`` itself never set either.
"""

import os

if os.environ.get("SKYFERRY_REHEARSAL_SEAM"):
    import rehearsal_seam

    rehearsal_seam.install(os.environ["SKYFERRY_REHEARSAL_SEAM"])
