"""tasks.storage against a real S3 server (moto's, on loopback)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from jobline.exceptions import StorageError
from jobline.settings import Settings
from jobtypes.base import InputFile, JobType
from tasks import storage
from tests.integration import s3
from tests.integration.s3 import S3Server, count_requests

# The shared fixtures, by assignment so that they are this module's fixtures too.
s3_server = s3.s3_server
s3_bucket = s3.s3_bucket

PRODUCTS = 200
FILES_PER_PRODUCT = 10


class S3Products(JobType):
    name = "s3_products"
    command = ["true"]
    product_glob = "*.SAFE"


@pytest.fixture
def settings(s3_server: S3Server, tmp_path: Path) -> Settings:
    return s3_server.settings(tmp_path / "data")


def job_type_on(url: str, settings: Settings) -> JobType:
    return type("OnS3", (S3Products,), {"input_storage": url})(settings)


def s3fs_of(settings: Settings) -> Any:
    """The very filesystem instance tasks.storage uses (fsspec caches instances)."""
    return storage.filesystem("s3://any", settings)[0]


def test_listing_two_thousand_objects_takes_a_few_requests(
    s3_server: S3Server,
    s3_bucket: str,
    settings: Settings,
) -> None:
    fs = s3fs_of(settings)
    s3_server.put_objects_directly(
        s3_bucket,
        {
            f"input/P{p:03d}.SAFE/band{f}.txt": f"{p}-{f}".encode()
            for p in range(PRODUCTS)
            for f in range(FILES_PER_PRODUCT)
        },
    )
    job_type = job_type_on(f"s3://{s3_bucket}/input", settings)
    now = datetime.now(UTC)

    with count_requests(fs) as requests:
        products = storage.list_products(
            job_type, now - timedelta(hours=1), now + timedelta(hours=1)
        )

    assert len(products) == PRODUCTS
    assert sum(len(p.files) for p in products) == PRODUCTS * FILES_PER_PRODUCT
    # 1,000 keys per page: 2,000 objects are 2 or 3 ListObjectsV2 calls, and nothing else.
    assert set(requests) == {"ListObjectsV2"}
    assert requests["ListObjectsV2"] <= 3
    first = products[0]
    assert first.path.startswith(f"s3://{s3_bucket}/input/P")
    assert abs(first.publication_date - now) < timedelta(minutes=5)
    assert {f.size for f in first.files} >= {len(b"0-0")}

    # The window applies to LastModified: nothing was published an hour from now.
    later = storage.list_products(job_type, now + timedelta(hours=1), now + timedelta(hours=2))
    assert later == []


def test_stage_then_upload_with_manifest(
    s3_bucket: str,
    settings: Settings,
    tmp_path: Path,
) -> None:
    fs = s3fs_of(settings)
    contents = {"b03.txt": b"green" * 100, "granule/b11.txt": b"swir" * 300}
    fs.pipe({f"{s3_bucket}/input/P.SAFE/{name}": data for name, data in contents.items()})
    job_type = job_type_on(f"s3://{s3_bucket}/input", settings)
    now = datetime.now(UTC)
    (product,) = storage.list_products(job_type, now - timedelta(hours=1), now + timedelta(hours=1))

    staged = storage.stage_inputs(product.path, product.files, tmp_path / "work/input", settings)

    assert {(s.path, s.size, s.sha256) for s in staged} == {
        (name, len(data), hashlib.sha256(data).hexdigest()) for name, data in contents.items()
    }
    assert (tmp_path / "work/input/granule/b11.txt").read_bytes() == contents["granule/b11.txt"]

    out = tmp_path / "work/output"
    (out / "meta").mkdir(parents=True)
    (out / "FSC.asc").write_bytes(b"0.4 0.5\n")
    (out / "meta" / "summary.json").write_bytes(b"{}")
    dest = f"s3://{s3_bucket}/output/snow/T32TLR/FSC_P/"
    assert not storage.manifest_exists(dest, settings)

    manifest = storage.upload_outputs(out, dest, settings)

    assert storage.manifest_exists(dest, settings)
    assert storage.read_manifest(dest, settings) == manifest
    assert [f.path for f in manifest.files] == ["FSC.asc", "meta/summary.json"]
    assert fs.cat_file(f"{s3_bucket}/output/snow/T32TLR/FSC_P/FSC.asc") == b"0.4 0.5\n"


def test_missing_object_is_transient(
    s3_bucket: str,
    settings: Settings,
    tmp_path: Path,
) -> None:
    with pytest.raises(StorageError) as caught:
        storage.stage_inputs(
            f"s3://{s3_bucket}/input/P.SAFE", [InputFile(path="gone.txt")], tmp_path, settings
        )
    assert caught.value.transient
    assert f"s3://{s3_bucket}/input/P.SAFE/gone.txt" in str(caught.value)


def write_outputs(out: Path) -> None:
    for name in ("a.asc", "b.asc", "c.asc"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(name.encode() * 10)


def test_an_s3_error_during_upload_leaves_no_manifest(
    s3_bucket: str,
    settings: Settings,
    tmp_path: Path,
) -> None:
    write_outputs(tmp_path / "out")
    dest = f"s3://{s3_bucket}/output/P/"
    storage.upload_outputs(tmp_path / "out", dest, settings)  # an earlier, complete upload
    fs = s3fs_of(settings)

    def deny_b(params: dict[str, Any], **_: Any) -> None:
        if params["Key"].endswith("b.asc"):
            error = {"Error": {"Code": "AccessDenied", "Message": "denied by bucket policy"}}
            raise ClientError(error, "PutObject")

    fs.s3.meta.events.register("before-parameter-build.s3.PutObject", deny_b)
    try:
        with pytest.raises(StorageError, match=r"b\.asc") as caught:
            storage.upload_outputs(tmp_path / "out", dest, settings)
    finally:
        fs.s3.meta.events.unregister("before-parameter-build.s3.PutObject", deny_b)

    assert caught.value.transient
    assert not storage.manifest_exists(dest, settings)


def test_upload_to_a_missing_bucket_fails_without_manifest(
    s3_server: S3Server,
    settings: Settings,
    tmp_path: Path,
) -> None:
    write_outputs(tmp_path / "out")
    with pytest.raises(StorageError) as caught:
        storage.upload_outputs(tmp_path / "out", "s3://no-such-bucket-here/out/", settings)
    assert caught.value.transient
    assert "no-such-bucket-here" in str(caught.value)


def test_a_hostile_key_is_refused(
    s3_bucket: str,
    settings: Settings,
    tmp_path: Path,
) -> None:
    fs = s3fs_of(settings)
    fs.pipe({f"{s3_bucket}/input/P.SAFE/fine.txt": b"fine"})
    fs.s3  # noqa: B018 - connect, then write the key raw: s3fs would not normalise it, but be sure
    fs.call_s3("put_object", Bucket=s3_bucket, Key="input/P.SAFE/../../etc/passwd", Body=b"pwn")
    job_type = job_type_on(f"s3://{s3_bucket}/input", settings)
    now = datetime.now(UTC)
    (product,) = storage.list_products(job_type, now - timedelta(hours=1), now + timedelta(hours=1))
    assert "../../etc/passwd" in [f.path for f in product.files]
    dest = tmp_path / "work" / "input"

    with pytest.raises(StorageError, match=r"'\.\./\.\./etc/passwd'") as caught:
        storage.stage_inputs(product.path, product.files, dest, settings)

    assert caught.value.subtype == "unsafe_path" and not caught.value.transient
    assert not dest.exists()
    assert not (tmp_path / "etc").exists()
