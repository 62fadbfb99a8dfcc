"""The deployment rehearsal: each stack's workloads run as their platform would, on the emulators.

See the section "The deployment rehearsal" of ``docs/providers.md``; the modules:
``stack`` (the stack as Pulumi loads it, its program under ``mocks``), one module per
target (``aws``, ``gcp``, ``azure``, ``kubernetes``: what the graph declares, made and
started), ``workloads`` (the specs, the process and image launchers, the probes),
``harness`` and ``drive`` (start, watch, drive), ``contracts`` (the checks every target
shares), ``moto_iam`` and ``permissions`` (identity), ``seam`` (what the workloads' own
processes record), ``known`` (the problems being fixed, as strict xfails).
"""
