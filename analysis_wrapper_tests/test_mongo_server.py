"""The MongoDB test server (``mongo_server``) is a real server: separate processes race on one unique
``_id``, the write results carry MongoDB's counts, and its data survives a SIGKILL."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap
import time
from typing import Any

import pymongo
import pytest
from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import AutoReconnect, BulkWriteError, DuplicateKeyError

from analysis_wrapper_tests.mongo_server import MongoServer, MongoServerFactory, fresh_database_name

pytestmark = pytest.mark.slow

RACER = textwrap.dedent(
    """
    import json, sys, time
    import pymongo
    from pymongo.errors import DuplicateKeyError
    uri, database, start_at, keys = sys.argv[1], sys.argv[2], float(sys.argv[3]), json.loads(sys.argv[4])
    collection = pymongo.MongoClient(uri, retryWrites=False)[database]["race"]
    collection.find_one({})  # connected before the start
    time.sleep(max(0.0, start_at - time.time()))
    outcome = {}
    for key in keys:
        try:
            collection.insert_one({"_id": key, "pid": __import__("os").getpid()})
            outcome[key] = "inserted"
        except DuplicateKeyError as exc:
            outcome[key] = exc.code
    print(json.dumps(outcome))
    """
)


@pytest.fixture
def db(mongo_server: MongoServer) -> Any:
    client = mongo_server.client()
    database = client[fresh_database_name("test_mongo_server")]
    yield database
    client.drop_database(database.name)
    client.close()


def test_uri_is_a_replica_set_primary(mongo_server: MongoServer) -> None:
    client = mongo_server.client()
    try:
        assert client.admin.command("ping")["ok"] == 1
        if mongo_server.managed:
            assert mongo_server.uri == f"mongodb://127.0.0.1:{mongo_server.port}/?replicaSet=secantus"
            assert client.topology_description.topology_type_name == "ReplicaSetWithPrimary"
            assert mongo_server.startup_s is not None and mongo_server.startup_s < 20
    finally:
        client.close()


def test_two_processes_insert_one_id(mongo_server: MongoServer, db: Any) -> None:
    keys = [f"k{i}" for i in range(20)]
    start_at = time.time() + 1.0
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, mongo_server.uri, db.name, str(start_at), json.dumps(keys)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outcomes = []
    for racer in racers:
        out, err = racer.communicate(timeout=60)
        assert racer.returncode == 0, err
        outcomes.append(json.loads(out))
    for key in keys:
        assert sorted(str(o[key]) for o in outcomes) == ["11000", "inserted"], key
    assert db.race.count_documents({}) == len(keys)


def test_lease_claim_upsert_on_a_held_lease_is_a_duplicate_key(db: Any) -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    leases = db.leases
    leases.insert_one({"_id": "held", "run_id": "a", "expires_at": now + dt.timedelta(minutes=5)})
    leases.insert_one({"_id": "stale", "run_id": "a", "expires_at": now - dt.timedelta(minutes=5)})

    def claim(key: str) -> Any:
        return leases.find_one_and_update(
            {"_id": key, "expires_at": {"$lt": now}},
            {"$set": {"run_id": "b", "expires_at": now + dt.timedelta(minutes=1)}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )

    with pytest.raises(DuplicateKeyError) as caught:
        claim("held")
    assert caught.value.code == 11000
    assert (caught.value.details or {}).get("keyValue") == {"_id": "held"}
    assert leases.find_one({"_id": "held"})["run_id"] == "a"
    assert claim("stale")["run_id"] == "b"
    assert claim("new")["run_id"] == "b"
    assert leases.count_documents({}) == 3


def test_update_many_with_a_state_condition(db: Any) -> None:
    db.jobs.insert_many([{"_id": i, "state": "queued" if i < 5 else "running"} for i in range(8)])
    result = db.jobs.update_many({"state": "queued"}, {"$set": {"state": "running"}})
    assert (result.matched_count, result.modified_count) == (5, 5)
    again = db.jobs.update_many({"state": "queued"}, {"$set": {"state": "running"}})
    assert (again.matched_count, again.modified_count) == (0, 0)


def test_bulk_write_update_one_counts(db: Any) -> None:
    db.jobs.insert_many([{"_id": i, "state": "running", "n": 0} for i in range(4)])
    ops = [
        UpdateOne({"_id": 0, "state": "running"}, {"$set": {"state": "done"}}),
        UpdateOne({"_id": 1, "state": "running"}, {"$set": {"state": "done"}, "$inc": {"n": 1}}),
        UpdateOne({"_id": 2, "state": "queued"}, {"$set": {"state": "done"}}),  # no match
        UpdateOne({"_id": 3}, {"$set": {"state": "running"}}),  # matched, nothing to change
        UpdateOne({"_id": 9}, {"$setOnInsert": {"state": "queued"}}, upsert=True),
    ]
    result = db.jobs.bulk_write(ops, ordered=False)
    assert (result.matched_count, result.modified_count, result.upserted_count) == (3, 2, 1)
    assert result.upserted_ids == {4: 9}
    assert sorted(d["_id"] for d in db.jobs.find({"state": "done"})) == [0, 1]


def test_insert_many_unordered_keeps_going_past_duplicates(db: Any) -> None:
    db.jobs.insert_many([{"_id": i} for i in range(3)])
    with pytest.raises(BulkWriteError) as caught:
        db.jobs.insert_many([{"_id": i} for i in range(1, 6)], ordered=False)
    details = caught.value.details
    assert details["nInserted"] == 3
    assert sorted(e["code"] for e in details["writeErrors"]) == [11000, 11000]
    assert db.jobs.count_documents({}) == 6


def test_null_or_missing(db: Any) -> None:
    """Null on plain paths is MongoDB's; on a positional path only ``$type``/``$exists`` are portable."""
    db.docs.insert_many(
        [
            {"_id": 1, "a": None},
            {"_id": 2},
            {"_id": 3, "a": "x"},
            {"_id": 4, "p": [{"b": None}]},
            {"_id": 5, "p": [{"b": "x"}]},
            {"_id": 6, "p": [{}]},
        ]
    )

    def ids(query: dict[str, Any]) -> list[int]:
        return sorted(d["_id"] for d in db.docs.find(query, {"_id": 1}))

    assert ids({"a": None}) == [1, 2, 4, 5, 6]
    assert ids({"a": {"$ne": None}}) == [3]
    assert ids({"a": {"$type": "null"}}) == [1]
    assert ids({"p.b": None}) == [1, 2, 3, 4, 6]
    null_or_missing = {"$or": [{"p.0.b": {"$type": "null"}}, {"p.0.b": {"$exists": False}}]}
    assert ids(null_or_missing) == [1, 2, 3, 4, 6]


def test_data_survives_sigkill_and_restart(mongo_server_factory: MongoServerFactory) -> None:
    server = mongo_server_factory()
    client = server.client(serverSelectionTimeoutMS=2000)
    jobs = client[fresh_database_name()]["jobs"]
    jobs.create_index([("analysis", pymongo.ASCENDING), ("key", pymongo.ASCENDING)], unique=True)
    jobs.insert_many([{"analysis": "a", "key": str(i), "state": "queued"} for i in range(50)])
    jobs.update_one({"key": "49"}, {"$set": {"state": "done"}})  # acknowledged w:1, then killed at once

    server.kill()
    assert not server.running
    with pytest.raises(AutoReconnect), pymongo.timeout(0.5):  # ServerSelectionTimeoutError is one
        jobs.find_one({"key": "0"})
    port = server.port
    server.start()
    assert server.port == port

    assert jobs.count_documents({}) == 50  # the same client reconnects
    assert jobs.find_one({"key": "49"})["state"] == "done"
    with pytest.raises(DuplicateKeyError):  # the unique index came back too
        jobs.insert_one({"analysis": "a", "key": "0"})
    client.close()
