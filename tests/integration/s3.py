"""A real S3 server for tests: moto's server on 127.0.0.1, one per test session.

Use from a test module (or a conftest) by importing the fixtures::

    from tests.integration.s3 import s3_bucket, s3_server  # noqa: F401

``s3_server`` starts the server (dummy credentials, no proxy, no instance metadata lookups) and
gives its endpoint and matching :class:`Settings`; ``s3_bucket`` creates a fresh bucket per test.
:func:`count_requests` counts the HTTP requests an s3fs filesystem sends, by operation.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import pytest

from jobline.settings import Settings
from tests.conftest import missing_service

#: What botocore needs to sign requests; moto accepts anything.
S3_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # Nothing may leave loopback: no proxy, no instance-metadata credential lookups, no profiles.
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def settings(self, data_dir: Path, **overrides: Any) -> Settings:
        """Settings whose s3:// URLs go to this server."""
        return Settings(data_dir=data_dir, s3_endpoint_url=self.endpoint_url, **overrides)

    def filesystem(self) -> fsspec.AbstractFileSystem:
        """An s3fs filesystem on this server, without listings cache."""
        return fsspec.filesystem(
            "s3", client_kwargs={"endpoint_url": self.endpoint_url}, use_listings_cache=False
        )

    def create_bucket(self) -> str:
        name = f"jobline-{uuid.uuid4().hex[:12]}"
        self.filesystem().mkdir(name)
        return name

    def put_objects_directly(self, bucket: str, objects: dict[str, bytes]) -> None:
        """Create many objects fast, for test setup only: the server runs in this process, so
        they go straight into moto's backend (one HTTP PUT costs moto ~10 ms of CPU)."""
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
        for key, data in objects.items():
            backend.put_object(bucket, key, data)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port for the whole session."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in S3_ENVIRONMENT.items():
            patch.setenv(name, value)
        try:
            import moto.server
        except ImportError as error:
            missing_service(f"moto[server] is not installed: {error}")
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        server = moto.server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield S3Server(endpoint_url=f"http://{host}:{port}")
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the session's server."""
    return s3_server.create_bucket()


@contextmanager
def count_requests(fs: fsspec.AbstractFileSystem) -> Iterator[Counter[str]]:
    """Count the HTTP requests ``fs`` (s3fs) sends while the block runs, by S3 operation."""
    counts: Counter[str] = Counter()

    def count(event_name: str, **_: Any) -> None:
        counts[event_name.rsplit(".", 1)[-1]] += 1

    events = fs.s3.meta.events
    events.register("before-send.s3", count)
    try:
        yield counts
    finally:
        events.unregister("before-send.s3", count)
