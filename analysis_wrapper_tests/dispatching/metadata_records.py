"""Metadata records for the dispatch tests, written with aind-data-schema's models.

Each record is what AIND's metadata collection holds for a data asset: ``_id``, ``name`` (the
``DataDescription`` name: subject and date), ``location``, ``created``, ``data_description`` (an
aind-data-schema ``DataDescription`` dump: subject id, modalities, creation time), ``subject``
(``subject_id``; a full ``Subject`` needs dozens of husbandry fields the dispatcher never reads) and
``external_links`` (``Code Ocean``: the data asset ids a CSV names).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aind_data_schema.components.identifiers import Person
from aind_data_schema.core.data_description import DataDescription, Funding
from aind_data_schema_models.modalities import Modality
from aind_data_schema_models.organizations import Organization

from analysis_wrapper.dispatching.metadata_db import MetadataDatabase
from analysis_wrapper_tests.mongo_server import MongoServer, fresh_database_name

MODALITIES = {"ecephys": Modality.ECEPHYS, "behavior": Modality.BEHAVIOR, "pophys": Modality.POPHYS}


@dataclass(frozen=True)
class Session:
    subject: str | None
    day: int
    modalities: Sequence[str]


# Three subjects, several sessions each, mixed modalities; one asset without a subject id.
SESSIONS = (
    Session("600001", 1, ["ecephys", "behavior"]),
    Session("600001", 3, ["ecephys"]),
    Session("600001", 7, ["behavior"]),
    Session("600002", 2, ["ecephys"]),
    Session("600002", 5, ["ecephys", "behavior"]),
    Session("600003", 4, ["pophys"]),
    Session(None, 6, ["ecephys"]),
)


def metadata_record(session: Session, location_root: str, seed: int = 0) -> dict[str, Any]:
    created = dt.datetime(2024, 3, session.day, 10, 30, 0, tzinfo=dt.UTC)
    description = DataDescription(
        subject_id=session.subject,
        creation_time=created,
        institution=Organization.AIND,
        funding_source=[Funding(funder=Organization.AI)],
        modalities=[MODALITIES[m] for m in session.modalities],
        project_name="Dispatch tests",
        investigators=[Person(name="Test Person")],
        # A raw asset must name its subject; the one without a subject id is a derived asset.
        data_level="raw" if session.subject else "derived",
        name=None if session.subject else f"ecephys_unknown_{created:%Y-%m-%d_%H-%M-%S}",
    )
    dumped = description.model_dump(mode="json")
    name = dumped["name"] or f"unknown_{created:%Y-%m-%d_%H-%M-%S}"
    key = f"{seed}:{session.subject}:{session.day}"
    return {
        "_id": str(uuid.uuid5(uuid.NAMESPACE_URL, key)),
        "name": name,
        "location": f"{location_root.rstrip('/')}/{name}",
        "created": created.isoformat(),
        "data_description": dumped,
        "subject": {"subject_id": session.subject},
        "external_links": {"Code Ocean": [str(uuid.uuid5(uuid.NAMESPACE_DNS, key))]},
    }


def seed_records(
    collection: Any, location_root: str, sessions: Sequence[Session] = SESSIONS
) -> list[dict[str, Any]]:
    records = [metadata_record(s, location_root) for s in sessions]
    collection.insert_many([dict(r) for r in records])
    return records


def many_records(n: int, location_root: str) -> list[dict[str, Any]]:
    """``n`` records for scale tests and benchmarks (one DataDescription dump reused; names differ)."""
    base = metadata_record(Session("700000", 1, ["ecephys"]), location_root)
    out = []
    for i in range(n):
        name = f"ecephys_{700000 + i % 500}_2024-03-01_10-{i // 60 % 60:02d}-{i % 60:02d}_{i:05d}"
        out.append(
            {
                **base,
                "_id": f"rec-{i:06d}",
                "name": name,
                "location": f"{location_root.rstrip('/')}/{name}",
                "subject": {"subject_id": str(700000 + i % 500)},
                "external_links": {"Code Ocean": [f"co-{i:06d}"]},
            }
        )
    return out


COLLECTION = "data_assets"


@dataclass
class MetadataCollection:
    server: MongoServer
    database: str
    records: list[dict[str, Any]]

    def db(self) -> MetadataDatabase:
        return MetadataDatabase(self.server.uri, database=self.database, collection=COLLECTION)

    def collection(self) -> Any:
        return self.server.client()[self.database][COLLECTION]

    def by_subject(self, subject: str | None) -> list[dict[str, Any]]:
        return [r for r in self.records if r["subject"]["subject_id"] == subject]


def seeded(server: MongoServer, location_root: str) -> MetadataCollection:
    database = fresh_database_name("dispatch")
    client = server.client()
    try:
        records = seed_records(client[database][COLLECTION], location_root)
    finally:
        client.close()
    return MetadataCollection(server, database, records)
