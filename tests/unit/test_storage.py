"""tasks.storage on memory:// and file:// storage: listing, staging, uploads, watermarks."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fsspec
import pytest

from db.store import JobStore
from jobline.exceptions import ConfigurationError, StorageError
from jobline.settings import Settings
from jobtypes.base import InputFile, JobType, Product
from tasks import storage

T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


class FolderProducts(JobType):
    name = "folders"
    command = ["true"]
    product_glob = "*.SAFE"


def job_type_on(url: str, settings: Settings, glob: str = "*.SAFE") -> JobType:
    cls = type("Listed", (FolderProducts,), {"input_storage": url, "product_glob": glob})
    return cls(settings)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def memory_root() -> Iterator[str]:
    """A fresh prefix in the (process-wide) memory filesystem, removed afterwards."""
    root = f"/t{uuid.uuid4().hex[:10]}"
    yield root
    fs = fsspec.filesystem("memory")
    for path in [p for p in fs.store if p.startswith(root + "/")]:
        del fs.store[path]


def put_memory(path: str, data: bytes, when: datetime) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe_file(path, data)
    fs.store[path].created = when


def put_local(path: Path, data: bytes, when: datetime) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (when.timestamp(), when.timestamp()))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------- listing


def test_memory_listing_takes_dates_window_and_files_from_one_listing(
    memory_root: str, settings: Settings
) -> None:
    put_memory(f"{memory_root}/in/B.SAFE/b03.txt", b"green", T0)
    put_memory(f"{memory_root}/in/B.SAFE/sub/b11.txt", b"swir!!", T0 + timedelta(hours=2))
    put_memory(f"{memory_root}/in/A.SAFE/b03.txt", b"a", T0 + timedelta(hours=1))
    put_memory(f"{memory_root}/in/old.SAFE/b03.txt", b"o", T0 - timedelta(days=1))
    put_memory(f"{memory_root}/in/late.SAFE/b03.txt", b"l", T0 + timedelta(days=1))
    put_memory(f"{memory_root}/in/notes.txt", b"not a product", T0)
    job_type = job_type_on(f"memory://{memory_root}/in", settings)

    products = storage.list_products(job_type, T0, T0 + timedelta(hours=12))

    assert [p.product_id for p in products] == ["A.SAFE", "B.SAFE"]
    a, b = products
    assert a.path == f"memory://{memory_root}/in/A.SAFE"
    assert a.publication_date == T0 + timedelta(hours=1)
    # A folder product is published when its newest file is.
    assert b.publication_date == T0 + timedelta(hours=2)
    assert [(f.path, f.size) for f in b.files] == [("b03.txt", 5), ("sub/b11.txt", 6)]


def test_window_is_half_open(memory_root: str, settings: Settings) -> None:
    put_memory(f"{memory_root}/in/at_start.SAFE/x", b"1", T0)
    put_memory(f"{memory_root}/in/at_end.SAFE/x", b"1", T0 + timedelta(hours=1))
    job_type = job_type_on(f"memory://{memory_root}/in", settings)

    products = storage.list_products(job_type, T0, T0 + timedelta(hours=1))

    assert [p.product_id for p in products] == ["at_start.SAFE"]


def test_file_listing_with_two_level_glob_and_object_products(
    tmp_path: Path, settings: Settings
) -> None:
    root = tmp_path / "input"
    put_local(root / "T32TLR" / "P2.SAFE" / "b03.txt", b"xx", T0 + timedelta(minutes=5))
    put_local(root / "T32TLR" / "P1.zip", b"zipped", T0)
    put_local(root / "T32TLR" / "readme.md", b"ignored", T0)
    put_local(root / "top.zip", b"one level only", T0)
    job_type = job_type_on(f"file://{root}", settings, glob="T*/*.*")

    products = storage.list_products(job_type, T0, T0 + timedelta(hours=1))

    assert [(p.product_id, p.publication_date) for p in products] == [
        ("P1.zip", T0),
        ("readme.md", T0),
        ("P2.SAFE", T0 + timedelta(minutes=5)),
    ]
    assert [(f.path, f.size) for f in products[0].files] == [("P1.zip", 6)]
    assert [(f.path, f.size) for f in products[2].files] == [("b03.txt", 2)]


def test_missing_input_storage_lists_nothing(tmp_path: Path, settings: Settings) -> None:
    job_type = job_type_on(f"file://{tmp_path / 'nowhere'}", settings)
    assert storage.list_products(job_type, T0, T0 + timedelta(days=1)) == []


def test_parse_product_can_drop_paths(memory_root: str, settings: Settings) -> None:
    put_memory(f"{memory_root}/in/keep.SAFE/x", b"1", T0)
    put_memory(f"{memory_root}/in/drop.SAFE/x", b"1", T0)

    class Picky(FolderProducts):
        input_storage = f"memory://{memory_root}/in"

        def parse_product(self, path: str, publication_date: datetime | None = None) -> Any:
            return None if "drop" in path else super().parse_product(path, publication_date)

    products = storage.list_products(Picky(settings), T0, T0 + timedelta(hours=1))
    assert [p.product_id for p in products] == ["keep.SAFE"]


def test_objects_the_parser_cannot_read_are_rejected_by_name(
    memory_root: str, settings: Settings
) -> None:
    for name in ("S2A_MSIL1C_X_N_R_T32TLR_Y", "S2B_garbage", "notes", "dots", "dash"):
        put_memory(f"{memory_root}/in/{name}.SAFE/x", b"1", T0)

    class ReadmeParser(FolderProducts):
        """The README's first example, which raised on names it could not split."""

        input_storage = f"memory://{memory_root}/in"

        def parse_product(self, path: str, publication_date: datetime | None = None) -> Any:
            product_id = path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".SAFE")
            if product_id == "notes":
                return None
            if product_id == "dots":
                return Product(product_id="..", path=path)
            if product_id == "dash":
                return {"product_id": "dash"}
            return Product(product_id=product_id, path=path, tile_id=product_id.split("_")[5])

    listing = storage.scan_products(ReadmeParser(settings), T0, T0 + timedelta(hours=1))

    assert [p.product_id for p in listing.products] == ["S2A_MSIL1C_X_N_R_T32TLR_Y"]
    rejected = {r.path.rsplit("/", 1)[-1]: r for r in listing.rejected}
    assert set(rejected) == {"S2B_garbage.SAFE", "notes.SAFE", "dots.SAFE", "dash.SAFE"}
    assert rejected["S2B_garbage.SAFE"].kind == "parser_error"
    assert "IndexError" in rejected["S2B_garbage.SAFE"].reason
    assert rejected["notes.SAFE"].kind == "ignored"
    assert rejected["dots.SAFE"].kind == "invalid_product"
    assert "'..'" in rejected["dots.SAFE"].reason
    assert "not a Product" in rejected["dash.SAFE"].reason


@pytest.mark.parametrize(
    ("product_id", "tile_id", "problem"),
    [
        ("a/b", None, "path separator"),
        ("a\\b", None, "path separator"),
        ("ok", "T1\n", "control character"),
        ("", None, "1 to 300"),
        ("x" * 301, None, "1 to 300"),
        ("ok", "", "1 to 64"),
    ],
)
def test_unsafe_product_and_tile_ids_are_named(
    product_id: str, tile_id: str | None, problem: str
) -> None:
    reason = storage.product_problem(Product(product_id=product_id, path="p", tile_id=tile_id))
    assert reason is not None and problem in reason


def test_a_safe_product_has_no_problem() -> None:
    product = Product(product_id="S2A_MSIL1C_X", path="p", tile_id="T32TLR")
    assert storage.product_problem(product) is None


@pytest.mark.parametrize("glob", ["**/*.SAFE", "", "a//b"])
def test_unsupported_glob_is_a_configuration_error(
    glob: str, memory_root: str, settings: Settings
) -> None:
    job_type = job_type_on(f"memory://{memory_root}/in", settings, glob=glob)
    with pytest.raises(ConfigurationError, match="product_glob"):
        storage.list_products(job_type, T0, T0 + timedelta(hours=1))


def test_unknown_scheme_names_the_url(settings: Settings) -> None:
    with pytest.raises(ConfigurationError, match="ftp://host/data"):
        storage.filesystem("ftp://host/data", settings)


# ---------------------------------------------------------------------------------- staging


def test_staging_checks_sizes_and_computes_sha256(
    memory_root: str, settings: Settings, tmp_path: Path
) -> None:
    contents = {"b03.txt": b"green band", "sub/deeper/b11.txt": b"swir" * 1000}
    for name, data in contents.items():
        put_memory(f"{memory_root}/in/P.SAFE/{name}", data, T0)
    files = [InputFile(path=name, size=len(data)) for name, data in contents.items()]
    dest = tmp_path / "work" / "input"

    staged = storage.stage_inputs(f"memory://{memory_root}/in/P.SAFE", files, dest, settings)

    assert [(s.path, s.size, s.sha256) for s in staged] == [
        (name, len(data), sha(data)) for name, data in contents.items()
    ]
    for name, data in contents.items():
        assert (dest / name).read_bytes() == data
    assert not list(dest.rglob("*.part"))


def test_staging_a_one_object_product(memory_root: str, settings: Settings, tmp_path: Path) -> None:
    put_memory(f"{memory_root}/in/P1.zip", b"zipped", T0)
    job_type = job_type_on(f"memory://{memory_root}/in", settings, glob="*.zip")
    (product,) = storage.list_products(job_type, T0, T0 + timedelta(hours=1))

    staged = storage.stage_inputs(product.path, product.files, tmp_path / "in", settings)

    assert [(s.path, s.size) for s in staged] == [("P1.zip", 6)]
    assert (tmp_path / "in" / "P1.zip").read_bytes() == b"zipped"


def test_no_files_stages_everything_under_the_product(
    memory_root: str, settings: Settings, tmp_path: Path
) -> None:
    put_memory(f"{memory_root}/in/P/a.txt", b"a", T0)
    put_memory(f"{memory_root}/in/P/sub/b.txt", b"bb", T0)
    put_memory(f"{memory_root}/in/single.zip", b"zip", T0)

    folder = storage.stage_inputs(f"memory://{memory_root}/in/P", [], tmp_path / "p", settings)
    single = storage.stage_inputs(
        f"memory://{memory_root}/in/single.zip", [], tmp_path / "s", settings
    )

    assert [(s.path, s.size) for s in folder] == [("a.txt", 1), ("sub/b.txt", 2)]
    assert [(s.path, s.size) for s in single] == [("single.zip", 3)]
    assert (tmp_path / "s" / "single.zip").read_bytes() == b"zip"


def test_size_mismatch_is_a_transient_error(
    memory_root: str, settings: Settings, tmp_path: Path
) -> None:
    put_memory(f"{memory_root}/in/P/a", b"12345", T0)
    with pytest.raises(StorageError, match="5 bytes, the listing said 4") as caught:
        storage.stage_inputs(
            f"memory://{memory_root}/in/P", [InputFile(path="a", size=4)], tmp_path, settings
        )
    assert caught.value.transient and caught.value.subtype == "size_mismatch"
    assert not (tmp_path / "a").exists()


def test_missing_object_is_a_transient_error_naming_the_url(
    memory_root: str, settings: Settings, tmp_path: Path
) -> None:
    put_memory(f"{memory_root}/in/P/here", b"1", T0)
    files = [InputFile(path="here", size=1), InputFile(path="gone", size=1)]
    with pytest.raises(StorageError) as caught:
        storage.stage_inputs(f"memory://{memory_root}/in/P", files, tmp_path / "d", settings)
    assert caught.value.transient and caught.value.subtype == "missing_object"
    assert f"{memory_root}/in/P/gone" in str(caught.value)


@pytest.mark.parametrize(
    "hostile",
    ["../../etc/passwd", "/etc/passwd", "a/../../b", "a/./b", "", "a\\..\\..\\b", "a//b"],
)
def test_unsafe_keys_are_refused_before_anything_is_written(
    hostile: str, memory_root: str, settings: Settings, tmp_path: Path
) -> None:
    put_memory(f"{memory_root}/in/P/fine.txt", b"fine", T0)
    dest = tmp_path / "work" / "input"
    files = [InputFile(path="fine.txt", size=4), InputFile(path=hostile, size=4)]

    with pytest.raises(StorageError) as caught:
        storage.stage_inputs(f"memory://{memory_root}/in/P", files, dest, settings)

    assert not caught.value.transient
    assert caught.value.subtype == "unsafe_path"
    assert repr(hostile) in str(caught.value)
    assert not dest.exists(), "nothing, not even the safe file, may be written"
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------- uploads


class RecordingFs:
    """Delegates to a real filesystem, records writes, and fails the n-th ``put_file``."""

    def __init__(self, fs: fsspec.AbstractFileSystem, fail_on_put: int | None = None) -> None:
        self._fs = fs
        self.writes: list[str] = []
        self.fail_on_put = fail_on_put

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fs, name)

    def put_file(self, local: str, remote: str, **kwargs: Any) -> None:
        if self.fail_on_put is not None and len(self.writes) + 1 == self.fail_on_put:
            raise OSError(5, "injected I/O error")
        self._fs.put_file(local, remote, **kwargs)
        self.writes.append(remote)

    def pipe_file(self, path: str, data: bytes, **kwargs: Any) -> None:
        self._fs.pipe_file(path, data, **kwargs)
        self.writes.append(path)


def make_outputs(src: Path) -> dict[str, bytes]:
    contents = {"FSC_20260110_T32TLR.asc": b"1 2 3\n", "meta/summary.json": b'{"snow": 0.4}'}
    for name, data in contents.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    return contents


def test_upload_writes_every_file_then_the_manifest_last(
    memory_root: str, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    contents = make_outputs(tmp_path / "out")
    recording = RecordingFs(fsspec.filesystem("memory"))
    real = storage.filesystem
    monkeypatch.setattr(storage, "filesystem", lambda url, s: (recording, real(url, s)[1]))
    dest = f"memory://{memory_root}/out/snow/T32TLR/FSC_P/"

    manifest = storage.upload_outputs(tmp_path / "out", dest, settings)

    assert recording.writes[-1] == f"{memory_root}/out/snow/T32TLR/FSC_P/manifest.json"
    assert len(recording.writes) == len(contents) + 1
    assert manifest.url == dest
    assert [(f.path, f.size, f.sha256) for f in manifest.files] == [
        (name, len(data), sha(data)) for name, data in sorted(contents.items())
    ]
    monkeypatch.setattr(storage, "filesystem", real)
    stored = json.loads(fsspec.filesystem("memory").cat_file(recording.writes[-1]))
    assert stored["files"] == [f.model_dump() for f in manifest.files]
    assert storage.manifest_exists(dest, settings)
    assert storage.read_manifest(dest, settings) == manifest


def test_upload_to_local_disk(tmp_path: Path, settings: Settings) -> None:
    contents = make_outputs(tmp_path / "out")
    dest = tmp_path / "published" / "snow" / "T32TLR" / "FSC_P"

    manifest = storage.upload_outputs(tmp_path / "out", f"file://{dest}/", settings)

    for name, data in contents.items():
        assert (dest / name).read_bytes() == data
    assert json.loads((dest / "manifest.json").read_text())["url"] == f"file://{dest}/"
    assert not list(dest.rglob("*.part"))
    assert len(manifest.files) == 2


def test_a_failed_upload_leaves_no_manifest_even_where_one_was(
    memory_root: str, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_outputs(tmp_path / "out")
    dest = f"memory://{memory_root}/out/P/"
    storage.upload_outputs(tmp_path / "out", dest, settings)  # an earlier, complete upload
    assert storage.manifest_exists(dest, settings)
    failing = RecordingFs(fsspec.filesystem("memory"), fail_on_put=2)
    real = storage.filesystem
    monkeypatch.setattr(storage, "filesystem", lambda url, s: (failing, real(url, s)[1]))

    with pytest.raises(StorageError, match="injected I/O error") as caught:
        storage.upload_outputs(tmp_path / "out", dest, settings, concurrency=1)

    assert caught.value.transient
    monkeypatch.setattr(storage, "filesystem", real)
    assert not storage.manifest_exists(dest, settings)


def test_symlinked_outputs_are_refused(tmp_path: Path, settings: Settings) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stolen").symlink_to("/etc/hostname")
    with pytest.raises(StorageError, match="symbolic link") as caught:
        storage.upload_outputs(tmp_path / "out", f"file://{tmp_path / 'dest'}", settings)
    assert not caught.value.transient
    assert not (tmp_path / "dest").exists()


def test_an_output_named_like_the_manifest_is_refused(tmp_path: Path, settings: Settings) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.json").write_text("{}")
    with pytest.raises(StorageError, match="manifest") as caught:
        storage.upload_outputs(tmp_path / "out", f"file://{tmp_path / 'dest'}", settings)
    assert caught.value.subtype == "reserved_name"


# ------------------------------------------------------------------------ work dirs, marks


def test_remove_work_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "job-1"
    (work / "input").mkdir(parents=True)
    assert storage.remove_work_dir(work, keep=True) is False and work.exists()
    assert storage.remove_work_dir(work, keep=False) is True and not work.exists()
    assert storage.remove_work_dir(work, keep=False) is False
    assert storage.remove_work_dir(Path(""), keep=False) is False
    monkeypatch.chdir(work.parent)
    with pytest.raises(ValueError, match="current directory"):
        storage.remove_work_dir(tmp_path, keep=False)
    assert tmp_path.exists()


def test_watermark_window_and_advance(sqlite_settings: Settings) -> None:
    store = JobStore.from_settings(sqlite_settings)
    now = T0 + timedelta(days=10)
    assert storage.watermark_window(store, "snow", now) == (now - timedelta(days=3), now)

    storage.advance_watermark(store, "snow", T0)
    assert storage.watermark_window(store, "snow", now) == (T0 - timedelta(hours=1), now)
    # Only forward.
    storage.advance_watermark(store, "snow", T0 - timedelta(days=1))
    assert store.get_meta("watermark:snow") == T0.isoformat(timespec="microseconds")
    storage.advance_watermark(store, "snow", T0 + timedelta(minutes=1))
    assert storage.watermark_window(store, "snow", now, overlap=timedelta(0))[0] == T0 + timedelta(
        minutes=1
    )
    # Explicit bounds win; other job types have their own watermark.
    explicit = (T0 - timedelta(days=30), T0 - timedelta(days=29))
    assert storage.watermark_window(store, "snow", now, *explicit) == explicit
    assert storage.watermark_window(store, "other", now)[0] == now - timedelta(days=3)
    store.engine.dispose()
