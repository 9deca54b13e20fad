"""The connection to MongoDB / AWS DocumentDB behind :class:`~analysis_wrapper.store.mongo.MongoStore`
(and the dispatcher's metadata database).

* A lazy pymongo client, DocumentDB-ready: ``retryWrites=False`` (DocumentDB has no retryable writes),
  optional TLS with a CA file, a server selection timeout.
* Every failure to reach or use the server is raised as :class:`StoreError` naming host(s) and
  database from :func:`redact_uri`; the password never appears in a message, and the original
  exception (which may hold the URI) is neither chained nor kept as context.
* Round trips are counted in ``query_count``; indexes are ensured once per collection and process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

from pymongo import IndexModel
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)

from analysis_wrapper.settings import redact_uri
from analysis_wrapper.store.base import StoreError
from analysis_wrapper.store.fields import chunks

log = logging.getLogger(__name__)

ID_CHUNK = 100
"""Ids per ``$in`` lookup. Small on purpose: a server that checks each document found against the
``$in`` list one candidate after another (SecantusDB does; see benchmarks/skip_check.py) spends
about k²/4 comparisons on k ids, so 10,000 ids in one query took seconds there, 100 per query
milliseconds. On MongoDB or DocumentDB, where ``$in`` on ``_id`` is an index lookup, 10,000
fingerprints are then 100 round trips instead of one: tens of milliseconds in one region, and each
query stays a few kilobytes."""
WRITE_CHUNK = 1_000
"""Operations per ``bulk_write`` / ``insert_many`` round trip (about 1 MB for job documents)."""
DUPLICATE_KEY = 11000
_AUTH_ERROR_CODES = {11, 13, 18}  # UserNotFound, Unauthorized, AuthenticationFailed
_INDEX_ERRORS_TO_TOLERATE = {13, 85, 86}  # Unauthorized, IndexOptionsConflict, IndexKeySpecsConflict

T = TypeVar("T")

# Indexes already ensured in this process for clients made from a URI: (uri, database, collection).
_ENSURED_INDEXES: set[tuple[str, str, str]] = set()
_ENSURED_LOCK = threading.Lock()


def _userinfo_and_hosts(uri: str) -> tuple[str, str]:
    """Split a ``mongodb://user:password@host1,host2/db?options`` URI as pymongo reads it, but
    tolerating an unescaped ``/`` in the password: the credentials end at the LAST ``@`` before
    the options."""
    rest = uri.split("://", 1)[-1].split("?", 1)[0]
    userinfo, at, hosts = rest.rpartition("@")
    if not at:
        userinfo, hosts = "", rest
    return userinfo, hosts.split("/", 1)[0]


def uri_hosts(uri: str) -> str:
    """The host list of a ``mongodb://`` / ``mongodb+srv://`` URI, without any credentials."""
    return _userinfo_and_hosts(uri)[1] or "localhost"


def _uri_secrets(uri: str) -> set[str]:
    """The password of ``uri`` in the forms it may appear in (as written, escaped, unescaped)."""
    secrets: set[str] = set()
    try:
        password = urlsplit(uri).password
        if password:
            secrets.add(password)
    except ValueError:
        pass
    userinfo = _userinfo_and_hosts(uri)[0]
    if ":" in userinfo:
        secrets.add(userinfo.split(":", 1)[1])
    for secret in list(secrets):
        secrets.update({quote(secret, safe=""), unquote(secret)})
    return {secret for secret in secrets if secret}


class MongoConnection:
    """A database on a MongoDB / DocumentDB server, reached through one lazy client."""

    def __init__(
        self,
        uri: str | None,
        *,
        database: str,
        client: Any = None,
        tls: bool | None = None,
        tls_ca_file: str | None = None,
        server_selection_timeout_ms: int = 10000,
    ):
        if client is None and not uri:
            raise ValueError("MongoStore needs a mongodb:// URI or a client")
        self._uri = uri
        self.database_name = database
        self.tls = tls
        self.tls_ca_file = tls_ca_file
        self.server_selection_timeout_ms = int(server_selection_timeout_ms)
        self.query_count = 0
        self._client = client
        self._owns_client = client is None
        self._client_lock = threading.Lock()
        self._ensured: set[tuple[str, str, str]] = set()  # for a client given by the caller
        self._secrets = _uri_secrets(uri) if uri else set()

    @property
    def uri(self) -> str | None:
        """The URI with the password replaced by ``***`` (safe to show)."""
        return self._scrub(redact_uri(self._uri)) if self._uri else None

    # ---- connection and errors ----------------------------------------------------------------
    def _where(self) -> str:
        if self._uri:
            hosts = self._scrub(uri_hosts(self._uri))
            return f"MongoDB at {hosts} (database {self.database_name!r}, uri {self.uri})"
        return f"MongoDB (given client, database {self.database_name!r})"

    def _scrub(self, text: str) -> str:
        """``text`` without the URI's password in any form."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def _store_error(self, action: str, exc: BaseException) -> StoreError:
        reason = str(exc).split(", Timeout:", 1)[0].strip()
        if isinstance(exc, ServerSelectionTimeoutError):
            message = f"cannot reach {self._where()} to {action}: {reason}"
        elif isinstance(exc, ConnectionFailure):
            message = f"lost the connection to {self._where()} while trying to {action}: {reason}"
        elif isinstance(exc, OperationFailure) and exc.code in _AUTH_ERROR_CODES:
            message = (
                f"authentication or authorization failed on {self._where()} while trying to {action} "
                f"(check the user, password and authSource in the URI): {reason}"
            )
        elif isinstance(exc, OperationFailure):
            message = f"{self._where()} refused to {action} (code {exc.code}): {reason}"
        else:
            message = f"{self._where()}: cannot {action}: {type(exc).__name__}: {reason}"
        return StoreError(self._scrub(message))

    def _run(self, action: str, call: Callable[[], T]) -> T:
        """One round trip: counted, and with pymongo failures turned into credential-free
        :class:`StoreError` raised outside the ``except`` block, so no original is kept as context."""
        self.query_count += 1
        try:
            return call()
        except (DuplicateKeyError, BulkWriteError):
            raise  # the callers handle these
        except PyMongoError as exc:
            error = self._store_error(action, exc)
        raise error from None

    def _find(
        self,
        action: str,
        collection: Any,
        query: Mapping[str, Any],
        projection: Mapping[str, Any] | None = None,
        *,
        sort: list[tuple[str, int]] | None = None,
        limit: int = 0,
        batch_size: int = 0,
    ) -> list[dict[str, Any]]:
        """A ``find`` read to the end in one round trip (``batch_size`` = the expected count)."""

        def read() -> list[dict[str, Any]]:
            cursor = collection.find(query, projection)
            if sort:
                cursor = cursor.sort(sort)
            if limit:
                cursor = cursor.limit(limit)
            if batch_size:
                cursor = cursor.batch_size(batch_size)
            return [dict(doc) for doc in cursor]

        return self._run(action, read)

    def _find_ids(
        self, action: str, collection: Any, ids: Sequence[str], projection: Mapping[str, Any] | None
    ) -> list[dict[str, Any]]:
        """The documents with these ``ids``: one ``$in`` lookup per :data:`ID_CHUNK` of them."""
        return [
            doc
            for chunk in chunks(ids, ID_CHUNK)
            for doc in self._find(
                action, collection, {"_id": {"$in": list(chunk)}}, projection, batch_size=len(chunk)
            )
        ]

    def _get_client(self) -> Any:
        if self._client is not None:
            return self._client
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        import pymongo

        options: dict[str, Any] = {
            "retryWrites": False,  # DocumentDB does not support retryable writes
            "serverSelectionTimeoutMS": self.server_selection_timeout_ms,
        }
        if self.tls is not None:
            options["tls"] = self.tls
        if self.tls_ca_file is not None:
            options["tlsCAFile"] = self.tls_ca_file
        log.debug("connecting to %s", self._where())
        try:
            return pymongo.MongoClient(self._uri, **options)
        except PyMongoError as exc:  # ConfigurationError / InvalidURI: the URI itself is wrong
            error = self._store_error("connect", exc)
        except (TypeError, ValueError) as exc:
            error = StoreError(self._scrub(f"{self._where()}: invalid connection options: {exc}"))
        raise error from None

    def _db(self) -> Any:
        return self._get_client()[self.database_name]

    def _ensure_indexes(self, name: str, indexes: list[IndexModel]) -> None:
        key = (self._uri or "", self.database_name, name)
        ensured = _ENSURED_INDEXES if self._owns_client else self._ensured
        if key in ensured:
            return
        collection = self._db()[name]

        def create() -> None:
            try:
                collection.create_indexes(indexes)
            except OperationFailure as exc:
                # A read-only user, or an index already there under another name or options, must
                # not stop the store from working: the indexes only make the queries fast.
                if exc.code not in _INDEX_ERRORS_TO_TOLERATE:
                    raise
                log.warning("%s: indexes on %r not created (%s)", self._where(), name, self._scrub(str(exc)))

        self._run(f"create indexes on {name!r}", create)
        with _ENSURED_LOCK:
            ensured.add(key)

    def close(self) -> None:
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            client.close()
