"""The S3 client every part uses (results, S3 inputs, the S3 inbox): bounded waits, one client per
configuration and process, and what a server that stops answering means.

dagster-aws's ``S3Resource`` sets only ``max_attempts`` (default 5) and leaves botocore's timeouts at
60 s: against an endpoint that accepts connections but never answers (a frozen server, a stalled
proxy) each request then waits 60 s five times, and an upload of parts in parallel about 6 minutes,
job after job. :class:`BoundedS3Resource` is that resource with the connect and read timeouts and the
retry mode configurable too (``S3_CONNECT_TIMEOUT_S``, ``S3_READ_TIMEOUT_S``, ``S3_MAX_ATTEMPTS``,
``S3_RETRY_MODE``), so a request gives up after about ``attempts x (read timeout + backoff)``.

:func:`s3_answering` turns botocore's connection errors into :class:`S3EndpointError`, whose message
says which endpoint did not answer, within how long, during what, and what to check; it never holds
credentials (the endpoint URL is shown with any user information removed).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Literal

import boto3
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import (
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
)
from dagster_aws.s3 import S3Resource
from pydantic import Field

from analysis_wrapper.resources.results_storage import ResultsStorageError
from analysis_wrapper.settings import redact_uri

DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 30.0
DEFAULT_MAX_ATTEMPTS = 3
RetryMode = Literal["standard", "adaptive", "legacy"]


class BoundedS3Resource(S3Resource):
    """dagster-aws ``S3Resource`` whose client waits a bounded time: connect and read timeouts and
    the retry policy (``max_attempts``, inherited, counts the first try) are botocore ``Config``."""

    max_attempts: int = Field(
        default=DEFAULT_MAX_ATTEMPTS,
        ge=1,
        description="Tries of one request, the first included (S3_MAX_ATTEMPTS)",
    )
    connect_timeout_s: float = Field(
        default=DEFAULT_CONNECT_TIMEOUT_S,
        gt=0,
        description="Seconds to open a connection (S3_CONNECT_TIMEOUT_S)",
    )
    read_timeout_s: float = Field(
        default=DEFAULT_READ_TIMEOUT_S,
        gt=0,
        description="Seconds to wait for the server on an open connection (S3_READ_TIMEOUT_S)",
    )
    retry_mode: RetryMode = Field(default="standard", description="botocore retry mode (S3_RETRY_MODE)")

    def botocore_config(self) -> Config:
        return Config(
            connect_timeout=self.connect_timeout_s,
            read_timeout=self.read_timeout_s,
            # botocore's own "max_attempts" counts retries only (it makes total_max_attempts of it + 1);
            # ours, like dagster-aws's description of it, counts the first try too.
            retries={"total_max_attempts": self.max_attempts, "mode": self.retry_mode},
            signature_version=UNSIGNED if self.use_unsigned_session else None,
        )

    def get_client(self) -> Any:
        # As dagster-aws builds it (session from the profile, then the same client options), with our
        # Config; an unsigned session is botocore's UNSIGNED signature rather than a signer hook.
        session = boto3.session.Session(profile_name=self.profile_name)
        return session.client(
            "s3",
            region_name=self.region_name,
            use_ssl=self.use_ssl,
            verify=self.verify,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
            config=self.botocore_config(),
        )


_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def cached_client(resource: S3Resource) -> Any:
    """One boto3 S3 client per resource configuration and process.

    Building a client reads botocore's service models from disk (about 0.2 s); doing that once per run
    would double the cost of a small job. boto3 clients are thread-safe, so sharing one is fine.
    """
    key = resource.model_dump_json()
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = resource.get_client()
        return client


class S3EndpointError(ResultsStorageError):
    """The S3 endpoint did not answer (timed out, refused or dropped the connection)."""


def describe_endpoint(client: Any) -> str:
    """The client's endpoint URL without user information."""
    return redact_uri(str(getattr(getattr(client, "meta", None), "endpoint_url", "") or "(default endpoint)"))


def waited(client: Any) -> tuple[float, float, int]:
    """The client's connect timeout, read timeout and attempts (botocore's defaults where unset)."""
    config = getattr(getattr(client, "meta", None), "config", None)
    retries = getattr(config, "retries", None) or {}
    return (
        float(getattr(config, "connect_timeout", None) or 60),
        float(getattr(config, "read_timeout", None) or 60),
        int(retries.get("total_max_attempts") or (retries.get("max_attempts") or 0) + 1),
    )


@contextlib.contextmanager
def s3_answering(client: Any, doing: str) -> Iterator[None]:
    """Run S3 requests ``doing`` something (``"uploading s3://b/k"``); a server that does not answer
    raises :class:`S3EndpointError` saying so."""
    try:
        yield
    except (BotoConnectionError, HTTPClientError) as exc:
        raise endpoint_error(client, doing, exc) from None


def _timed_out(exc: BaseException) -> bool:
    """True when a socket timeout is behind ``exc`` (botocore keeps urllib3's error in ``kwargs``)."""
    seen: list[BaseException] = []
    todo: list[Any] = [exc]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or item in seen or len(seen) > 20:
            continue
        seen.append(item)
        if isinstance(item, TimeoutError):
            return True
        todo.extend([*item.args, getattr(item, "kwargs", {}).get("error"), item.__cause__, item.__context__])
    return False


def endpoint_error(client: Any, doing: str, exc: Exception) -> S3EndpointError:
    endpoint = describe_endpoint(client)
    connect_s, read_s, attempts = waited(client)
    tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
    advice = (
        "check that the server is up and reachable from this host (AWS_ENDPOINT_URL, network); "
        "S3_CONNECT_TIMEOUT_S, S3_READ_TIMEOUT_S and S3_MAX_ATTEMPTS bound this wait"
    )
    if isinstance(exc, ReadTimeoutError) or _timed_out(exc):
        # A send that makes no progress for the read timeout (a frozen server's full socket buffer)
        # surfaces as a closed connection caused by a timeout.
        what = f"did not answer within {read_s:g} s ({tries})"
    elif isinstance(exc, ConnectTimeoutError):
        what = f"did not accept a connection within {connect_s:g} s ({tries})"
    elif isinstance(exc, EndpointConnectionError):
        what = f"could not be reached ({tries}: connection refused or no route)"
    else:
        what = f"dropped the connection ({tries}: {type(exc).__name__})"
    return S3EndpointError(f"S3 endpoint {endpoint} {what} while {doing}; {advice}")
