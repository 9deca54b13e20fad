"""Seed a metadata collection for trying ``analysis-wrapper dispatch``: NWB sessions on disk and their
metadata records (written with aind-data-schema's ``DataDescription``, a dev dependency), in the
collection ``METADATA_DOCDB_URI`` / ``_DATABASE`` / ``_COLLECTION`` names.

    python -m examples.seed_metadata [FOLDER] [--sessions N]

The sessions are the example generator's (``examples/make_examples.py``), under ``FOLDER/data/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from examples.make_examples import write_examples


def record_for(asset_dir: Path, subject_id: str, created: dt.datetime) -> dict[str, Any]:
    from aind_data_schema.components.identifiers import Person
    from aind_data_schema.core.data_description import DataDescription, Funding
    from aind_data_schema_models.modalities import Modality
    from aind_data_schema_models.organizations import Organization

    description = DataDescription(
        subject_id=subject_id,
        creation_time=created,
        institution=Organization.AIND,
        funding_source=[Funding(funder=Organization.AI)],
        modalities=[Modality.ECEPHYS],
        project_name="Analysis wrapper example",
        investigators=[Person(name="Example Person")],
        data_level="raw",
    )
    return {
        "_id": str(uuid.uuid5(uuid.NAMESPACE_URL, str(asset_dir))),
        "name": asset_dir.name,
        "location": str(asset_dir),
        "created": created.isoformat(),
        "data_description": description.model_dump(mode="json"),
        "subject": {"subject_id": subject_id},
        "external_links": {"Code Ocean": [str(uuid.uuid5(uuid.NAMESPACE_DNS, str(asset_dir)))]},
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "folder", nargs="?", default="examples/data/dispatch_demo", help="where the NWB sessions go"
    )
    parser.add_argument("--sessions", type=int, default=4, help="how many sessions")
    args = parser.parse_args(argv)

    import pymongo

    from analysis_wrapper.settings import Settings

    settings = Settings()
    secret = settings.METADATA_DOCDB_URI or settings.DOCDB_URI
    if secret is None:
        raise SystemExit("set METADATA_DOCDB_URI (the metadata database to seed)")
    write_examples(Path(args.folder), n_jobs=args.sessions, seed=7)
    records = []
    for asset_dir in sorted((Path(args.folder).resolve() / "data").iterdir()):
        _modality, subject_id, day, clock = asset_dir.name.split("_")
        created = dt.datetime.fromisoformat(f"{day}T{clock.replace('-', ':')}+00:00")
        records.append(record_for(asset_dir, subject_id, created))
    client: Any = pymongo.MongoClient(secret.get_secret_value(), retryWrites=False)
    try:
        collection = client[settings.METADATA_DOCDB_DATABASE][settings.METADATA_DOCDB_COLLECTION]
        for record in records:
            collection.replace_one({"_id": record["_id"]}, record, upsert=True)
    finally:
        client.close()
    print(
        f"{len(records)} metadata records in {settings.METADATA_DOCDB_DATABASE}."
        f"{settings.METADATA_DOCDB_COLLECTION}; sessions under {Path(args.folder).resolve() / 'data'}"
    )


if __name__ == "__main__":
    main()
