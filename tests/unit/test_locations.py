"""Where a job's products live (``jobtypes.locations``) and the API's loopback and token rules
(``api.auth``), without services."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from api.auth import host_name, is_loopback
from jobline.exceptions import StorageError
from jobline.settings import Settings
from jobtypes.demo import SnowCover
from jobtypes.locations import lies_within, product_folder, same_location

ROOT = "file:///data/output"


@pytest.mark.parametrize(
    ("url", "inside"),
    [
        ("file:///data/output/snow/T1/P/", True),
        ("file:///data/output/x", True),
        ("file:///data/output", False),  # the root itself
        ("file:///data/output/", False),
        ("file:///data/outputs/x", False),  # a sibling with the same prefix
        ("file:///data/output/../x", False),
        ("file:///data/output/%2e%2e/x", False),
        ("file:///data/output/a/./b", False),
        ("file:///data/output//x", False),
        ("file:///data/output/a\\..\\b", False),
        ("file:///data/output/x?y=1", False),
        ("file:///data/output/x#frag", False),
        ("file:///data/output/x\x00", False),
        ("file:///data/output/x\n", False),
        ("file://host/data/output/x", False),  # another authority
        ("s3://data/output/x", False),
        ("/data/output/x", False),  # no scheme
        ("file:///", False),
    ],
)
def test_lies_within(url: str, inside: bool) -> None:
    assert lies_within(url, ROOT) is inside


def test_the_root_itself_is_within_when_not_strict() -> None:
    assert lies_within(ROOT + "/", ROOT, strictly=False)
    assert same_location(ROOT + "/", ROOT)
    assert not same_location(ROOT + "/x", ROOT)


def job(**fields: object) -> SimpleNamespace:
    return SimpleNamespace(**{"id": 1, "tile_id": "T32TLR", "product_id": "P", **fields})


def test_a_jobs_product_folder_is_one_segment_per_part(tmp_path: Path) -> None:
    kind = SnowCover(Settings(data_dir=tmp_path))
    folder = product_folder(kind, job())  # type: ignore[arg-type]
    assert folder == f"file://{tmp_path}/output/snow_cover/T32TLR/FSC_unknown_T32TLR/"
    assert lies_within(folder, kind.output_url)


@pytest.mark.parametrize("tile", ["..", ".", "a/b", "a\\b", "%2e%2e"])
def test_a_hostile_tile_names_no_folder(tmp_path: Path, tile: str) -> None:
    kind = SnowCover(Settings(data_dir=tmp_path))
    with pytest.raises(StorageError, match="not one plain path segment") as refused:
        product_folder(kind, job(tile_id=tile))  # type: ignore[arg-type]
    assert refused.value.subtype == "unsafe_path" and not refused.value.transient


@pytest.mark.parametrize(
    ("header", "loopback"),
    [
        ("localhost:8000", True),
        ("LOCALHOST", True),
        ("127.0.0.1:8000", True),
        ("127.1.2.3", True),
        ("[::1]:8000", True),
        ("::1", True),
        ("evil.example", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.nip.io:80", False),
        ("[::ffff:8.8.8.8]:80", False),
        ("", False),
    ],
)
def test_loopback_hosts(header: str, loopback: bool) -> None:
    assert is_loopback(host_name(header)) is loopback
