"""This repository's own code location (``dagster dev``, ``workspace.yaml``, the image, the demo): the
analyses :func:`~analysis_wrapper.analyses.discover_analyses` finds, the shipped example where no
package declares one. A team's location is its own ``definitions.py`` calling
:func:`~analysis_wrapper.code_location.build_definitions` with its analyses."""

from analysis_wrapper.code_location import build_definitions

defs = build_definitions()
