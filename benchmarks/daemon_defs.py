"""The code location of the daemon benchmark (item 3b): the shipped definitions (assets, jobs, inbox
and run-events sensors, resources from settings) serving the benchmark's trivial analysis."""

from analysis_wrapper.code_location import build_definitions
from benchmarks import trivial

defs = build_definitions(analyses=[trivial.analysis])
