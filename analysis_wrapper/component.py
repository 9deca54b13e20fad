"""An analysis project in Dagster's ``create-dagster`` / ``dg`` layout: the analyses as one component.

In that layout a project's ``definitions.py`` loads its ``defs`` folder (``dagster.load_from_defs_folder``)
and each folder there holds a ``defs.yaml`` naming a component. A team's analyses are served with one::

    type: analysis_wrapper.component.AnalysesComponent
    attributes:
      analyses: [team_alpha.sizes, "team_beta.sizes:analysis"]

each reference being what an entry point's value is (a module, or ``module:attribute``). It is a Python
component because each analysis's partitions are dynamic (one per registered job), which Dagster's YAML
asset components cannot declare. One per code location: its Definitions are
:func:`~analysis_wrapper.code_location.build_definitions`'s, with the location's resources (record store,
results), run-end sensors and dispatch, which a second component would declare again.
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from analysis_wrapper.analyses import analysis_of_reference
from analysis_wrapper.code_location import build_definitions


class AnalysesComponent(dg.Component, dg.Model, dg.Resolvable):
    """The analyses of a code location, by reference; resources and sensors from the settings."""

    analyses: list[str] = Field(description="Each a module or `module:attribute`, as an entry point's value")

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        return build_definitions(analyses=[analysis_of_reference(ref) for ref in self.analyses])
