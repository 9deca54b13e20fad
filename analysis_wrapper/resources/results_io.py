"""The results IO manager: reads a partition's stored outputs back for downstream assets.

It stores nothing. The result asset commits each partition itself (:mod:`analysis_wrapper.commit`) and
reports a ``MaterializeResult`` without a value, which Dagster hands to no IO manager. The resource
carries where results are (``results``) and the record store, for the assets and for ``load_input``:
the analysis's ``Outputs`` read from ``outputs.json`` in the folder the partition's latest
materialization names.
"""

import importlib
import json
from typing import Any

from dagster import AssetRecordsFilter, ConfigurableIOManager, InputContext, OutputContext
from pydantic import BaseModel

from analysis_wrapper.resources.record_store import StoreResource
from analysis_wrapper.resources.results_resources import ResultsStorageResource
from analysis_wrapper.resources.results_storage import OUTPUTS_FILE
from analysis_wrapper.result_metadata import LOCATION_METADATA_KEY

OUTPUTS_MODEL_METADATA_KEY = "outputs_model"


class ResultsIOManager(ConfigurableIOManager):  # type: ignore[misc]
    """Result folders are in ``results`` (picked in ``definitions.py``), records in ``store``."""

    store: StoreResource
    results: ResultsStorageResource

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        """Nothing to store: the result asset committed the partition before it reported it."""

    def load_input(self, context: InputContext) -> BaseModel:
        upstream = context.upstream_output
        assert upstream is not None and upstream.asset_key is not None
        partition = context.asset_partition_key
        records = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=upstream.asset_key, asset_partitions=[partition]), limit=1
        ).records
        if not records:
            raise FileNotFoundError(
                f"{upstream.asset_key.to_user_string()} partition {partition} is not materialized"
            )
        materialization = records[0].asset_materialization
        assert materialization is not None
        location = self._input_location(upstream.definition_metadata, materialization.metadata)
        storage, name = self.results.at_location(location)
        data = json.loads(storage.read_bytes(name, OUTPUTS_FILE))
        return outputs_model(upstream.definition_metadata).model_validate(data)

    def _input_location(self, definition: Any, metadata: Any) -> str:
        """The folder the partition's latest materialization names; the record's, by fingerprint, when
        it says the partition was skipped (materializations of earlier versions did)."""
        value = {k: str(getattr(v, "value", v) or "") for k, v in {**(definition or {}), **metadata}.items()}
        if not value.get("status", "").startswith("skipped"):
            return value[LOCATION_METADATA_KEY]
        analysis, fingerprint = value.get("analysis"), value.get("fingerprint")
        record = (
            self.store.get_store().get_record(analysis, fingerprint) if analysis and fingerprint else None
        )
        if record is None:
            raise FileNotFoundError(
                f"fingerprint {fingerprint or '?'} of {analysis or 'this analysis'} is not recorded: the "
                f"partition's latest materialization was {value['status']!r}"
            )
        return str(record["location"])


def outputs_model(definition_metadata: Any) -> type[BaseModel]:
    """The ``Outputs`` class named in the asset's definition metadata (``module:Class``)."""
    entry = (definition_metadata or {}).get(OUTPUTS_MODEL_METADATA_KEY)
    text = str(getattr(entry, "value", entry) or "")
    module_name, _, class_name = text.partition(":")
    if not module_name or not class_name:
        raise TypeError(f"asset metadata {OUTPUTS_MODEL_METADATA_KEY!r} must be 'module:Class', got {text!r}")
    model = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(f"{text} is not a pydantic model")
    return model
