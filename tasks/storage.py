"""Input and output storage through fsspec: list products, stage inputs, upload outputs.

Plain functions (no Prefect). Storage is named by URL: ``file://``, ``s3://`` (AWS, or any
S3-compatible server through ``JOBLINE_S3_ENDPOINT_URL``) and ``memory://`` (tests). Every driver
error is translated into :class:`StorageError`: transient (the job is retried) for a missing
object or a failing store, not transient for a hostile or reserved path.

* :func:`list_products` lists a job type's whole input tree in ONE listing call (paginated by the
  store, 1,000 keys per S3 request), so tens of thousands of objects cost tens of requests, not
  tens of thousands.
* :func:`stage_inputs` refuses paths that would leave the work dir before writing anything,
  downloads concurrently, checks sizes and computes SHA-256.
* :func:`upload_outputs` writes ``manifest.json`` LAST: a manifest present means every file it
  names is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, Field

from db.models import Job
from db.store import JobStore
from jobline.exceptions import ConfigurationError, StorageError
from jobline.settings import Settings
from jobtypes.base import InputFile, JobType, OutputFile, Product
from jobtypes.locations import product_folder, same_location

T = TypeVar("T")

MANIFEST = "manifest.json"
SCHEMES = ("file", "s3", "memory")
#: HTTP connections per S3 client: botocore's default of 10 would cap concurrent transfers.
S3_MAX_CONNECTIONS = 64
#: Where a listing entry keeps its modification time, by backend (S3, local, memory).
DATE_FIELDS = ("LastModified", "mtime", "last_modified", "created")
WATERMARK_PREFIX = "watermark:"


class StagedFile(BaseModel):
    """One input file in the work dir: its path relative to the staging dir, size, checksum."""

    path: str
    size: int
    sha256: str


class Manifest(BaseModel):
    """What :func:`upload_outputs` wrote; stored as ``manifest.json`` next to the outputs."""

    url: str
    created_at: datetime
    files: list[OutputFile] = Field(default_factory=list)


# ------------------------------------------------------------------------------ filesystems


def filesystem(url: str, settings: Settings) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem serving ``url`` and the path of ``url`` on it."""
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ConfigurationError(
            f"storage URL {url!r}: scheme must be one of {', '.join(s + '://' for s in SCHEMES)}"
        )
    options: dict[str, Any] = {}
    if scheme == "file":
        options["auto_mkdir"] = True
    elif scheme == "s3":
        # No listings cache: discovery must see objects that appeared since the last listing.
        options["use_listings_cache"] = False
        options["config_kwargs"] = {"max_pool_connections": S3_MAX_CONNECTIONS}
        if settings.s3_endpoint_url:
            options["client_kwargs"] = {"endpoint_url": settings.s3_endpoint_url}
    fs = fsspec.filesystem(scheme, **options)
    return fs, fs._strip_protocol(url).rstrip("/") or "/"


def _join(root: str, relative: str) -> str:
    return f"{root.rstrip('/')}/{relative}" if relative else root


# ---------------------------------------------------------------------------------- listing


class Rejection(BaseModel):
    """A listed object that did not become a product, and why; discovery goes on without it."""

    path: str
    kind: Literal["ignored", "parser_error", "invalid_product"] = Field(
        description="ignored: parse_product returned None; parser_error: it raised; "
        "invalid_product: its product or tile id is unsafe in paths"
    )
    reason: str


class Listing(BaseModel):
    """What :func:`scan_products` found: the products, and the objects it rejected."""

    products: list[Product] = Field(default_factory=list)
    rejected: list[Rejection] = Field(default_factory=list)


def list_products(job_type: JobType, since: datetime, until: datetime) -> list[Product]:
    """The products of :func:`scan_products`, without the rejected objects."""
    return scan_products(job_type, since, until).products


def scan_products(job_type: JobType, since: datetime, until: datetime) -> Listing:
    """Products under the job type's input storage published in ``[since, until)``.

    One listing of the whole tree; ``product_glob`` (``/``-separated, no ``**``) is matched
    component by component against each listed path: a hit with files below it is a folder
    product (its date is its newest file's), a hit that is a file is a one-object product. Each
    product goes through ``job_type.parse_product``; sorted by publication date, then id. A hit
    the parser returns None for, raises on, or turns into an unsafe product is rejected (see
    :class:`Rejection`): one bad object never stops the others.
    """
    for name, bound in (("since", since), ("until", until)):
        if bound.tzinfo is None:
            raise ValueError(f"{name}: {bound} is naive; discovery windows are timezone-aware")
    url = job_type.input_url
    pattern = _glob_parts(job_type.product_glob)
    fs, root = filesystem(url, job_type.settings)
    entries = _call(lambda: _find(fs, root), f"cannot list input storage {url}")
    found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name, info in entries.items():
        relative = _relative_to(root, name)
        if relative is None or info.get("type") == "directory" or name.endswith("/"):
            continue
        parts = relative.split("/")
        head = parts[: len(pattern)]
        if len(parts) < len(pattern) or not all(map(fnmatchcase, head, pattern)):
            continue
        found.setdefault("/".join(head), []).append(("/".join(parts[len(pattern) :]), info))
    listing = Listing()
    for head, files in sorted(found.items()):
        try:
            product = _product(job_type, url, head, files, since, until)
        except _Rejected as rejected:
            listing.rejected.append(rejected.rejection)
            continue
        if product is not None:
            listing.products.append(product)
    earliest = datetime.min.replace(tzinfo=UTC)
    listing.products.sort(key=lambda p: (p.publication_date or earliest, p.product_id))
    return listing


#: Longest product id and tile id (the columns' sizes).
MAX_PRODUCT_ID, MAX_TILE_ID = 300, 64


def product_problem(product: object) -> str | None:
    """Why a product made from a listed object cannot become a job, or None when it can.

    Product and tile ids end up in work dirs, output paths and messages: they must be
    non-empty, fit their columns, and hold no path separator, ``..`` or control character."""
    if not isinstance(product, Product):
        return f"parse_product returned a {type(product).__name__}, not a Product or None"
    for field, value, longest in (
        ("product_id", product.product_id, MAX_PRODUCT_ID),
        ("tile_id", product.tile_id, MAX_TILE_ID),
    ):
        if value is None and field == "tile_id":
            continue
        if not value or len(value) > longest:
            return f"{field} {value!r} must have 1 to {longest} characters"
        if "/" in value or "\\" in value or value in (".", "..") or not value.isprintable():
            return f"{field} {value!r} holds a path separator, '..' or a control character"
    return None


class _Rejected(Exception):
    def __init__(self, rejection: Rejection) -> None:
        self.rejection = rejection


def _glob_parts(glob: str) -> list[str]:
    parts = glob.strip("/").split("/")
    if not glob.strip("/") or any(part in ("", "**") for part in parts):
        raise ConfigurationError(
            f"product_glob {glob!r}: give one pattern per path level, like '*' or '*/*.SAFE' "
            "('**' and empty levels are not supported)"
        )
    return parts


def _find(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, dict[str, Any]]:
    """Every file below ``root`` with its details, in one (paginated) listing; {} if none."""
    try:
        return fs.find(root, detail=True, withdirs=False)
    except FileNotFoundError:
        return {}


def _relative_to(root: str, name: str) -> str | None:
    prefix = root.rstrip("/") + "/"
    return name[len(prefix) :] if name.startswith(prefix) else None


def _product(
    job_type: JobType,
    url: str,
    head: str,
    files: list[tuple[str, dict[str, Any]]],
    since: datetime,
    until: datetime,
) -> Product | None:
    dates = [d for _, info in files if (d := _listed_date(info)) is not None]
    published = max(dates) if dates else None
    # A product whose storage gives no date is always listed: jobs are deduplicated by key.
    if published is not None and not since <= published < until:
        return None
    path = _join(url.rstrip("/"), head)
    try:
        product = job_type.parse_product(path, published)
    except Exception as error:  # noqa: BLE001 - a partner's parser failing on one object
        reason = f"parse_product raised {type(error).__name__}: {error}"
        raise _Rejected(Rejection(path=path, kind="parser_error", reason=reason)) from None
    if product is None:
        reason = "parse_product returned None (not a product name it can read)"
        raise _Rejected(Rejection(path=path, kind="ignored", reason=reason))
    problem = product_problem(product)
    if problem is not None:
        raise _Rejected(Rejection(path=path, kind="invalid_product", reason=problem))
    one_object = len(files) == 1 and files[0][0] == ""
    listed = [
        InputFile(path=PurePosixPath(head).name if one_object else path, size=info.get("size"))
        for path, info in sorted(files, key=lambda item: item[0])
    ]
    return product.model_copy(update={"files": product.files or listed})


def _listed_date(info: dict[str, Any]) -> datetime | None:
    for field in DATE_FIELDS:
        value = info.get(field)
        if value is None:
            continue
        if isinstance(value, datetime):
            return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


# ---------------------------------------------------------------------------------- staging


def stage_inputs(
    product_url: str,
    files: list[InputFile],
    dest: Path,
    settings: Settings,
    concurrency: int = 16,
) -> list[StagedFile]:
    """Download ``files`` (paths relative to the product) into ``dest``, concurrently; check
    each size against the listing and return sizes and SHA-256 checksums in the given order.

    A path that would land outside ``dest`` is refused before anything is written. A product
    that is one object has a single file named like the object (as :func:`list_products` lists
    it). No ``files`` (a job submitted with just a path) stages everything under the product,
    found with one listing. Each file is written as ``<name>.part`` and renamed when complete.
    """
    dest = Path(dest)
    fs, root = filesystem(product_url, settings)
    if not files:
        files = _product_files(fs, root, product_url)
    targets = [_safe_target(file.path, dest, product_url) for file in files]
    sources = _sources(fs, root, product_url, files)
    dest.mkdir(parents=True, exist_ok=True)

    def stage(index: int) -> StagedFile:
        source, target, file = sources[index], targets[index], files[index]
        remote = fs.unstrip_protocol(source)
        _call(lambda: _download(fs, source, target), f"cannot download {remote}")
        size = target.stat().st_size
        if file.size is not None and size != file.size:
            target.unlink(missing_ok=True)
            raise StorageError(
                f"input {remote} has {size} bytes, the listing said {file.size}: "
                "it changed while being staged",
                subtype="size_mismatch",
            )
        return StagedFile(path=file.path, size=size, sha256=_sha256(target))

    return _run_all(stage, range(len(files)), concurrency)


def _product_files(fs: fsspec.AbstractFileSystem, root: str, product_url: str) -> list[InputFile]:
    """Every file of a product, from one listing (a one-object product lists itself)."""
    entries = _call(lambda: _find(fs, root), f"cannot list {product_url}")
    files = []
    for name, info in sorted(entries.items()):
        if info.get("type") == "directory" or name.endswith("/"):
            continue
        relative = PurePosixPath(name).name if name == root else _relative_to(root, name)
        if relative is not None:
            files.append(InputFile(path=relative, size=info.get("size")))
    return files


def _safe_target(relative: str, dest: Path, product_url: str) -> Path:
    """The local path of ``relative`` under ``dest``; refuses escapes before any write."""
    path = PurePosixPath(relative)
    bad = (
        not relative
        or "\\" in relative
        or path.is_absolute()
        or any(part in ("..", ".", "") for part in relative.split("/"))
    )
    target = (dest / relative).resolve() if not bad else None
    if target is None or not target.is_relative_to(dest.resolve()):
        raise StorageError(
            f"input key {relative!r} of {product_url} would be written outside the work dir: "
            "keys must be relative paths without '..' or '.' parts",
            transient=False,
            subtype="unsafe_path",
        )
    return target


def _sources(
    fs: fsspec.AbstractFileSystem, root: str, product_url: str, files: list[InputFile]
) -> list[str]:
    # One file named like the product: the product is that object itself, unless it is a folder
    # holding a file of its own name (one existence check settles it).
    if len(files) == 1 and files[0].path == PurePosixPath(root).name:
        is_object = _call(lambda: fs.isfile(root), f"cannot read {product_url}")
        if is_object:
            return [root]
    return [_join(root, file.path) for file in files]


def _download(fs: fsspec.AbstractFileSystem, source: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        fs.get_file(source, str(partial))
        if not partial.is_file():
            raise FileNotFoundError(source)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# ---------------------------------------------------------------------------------- uploads


def upload_outputs(src: Path, dest_url: str, settings: Settings, concurrency: int = 16) -> Manifest:
    """Upload every file under ``src`` to ``dest_url``, then write ``manifest.json`` last.

    An earlier manifest at ``dest_url`` is removed first, so that a manifest is only ever next
    to the files it names. On any failure the manifest is not written and
    :class:`StorageError` (transient) is raised. Symbolic links and a top-level
    ``manifest.json`` among the outputs are refused (not transient).
    """
    src = Path(src)
    relatives = _output_files(src)
    fs, root = filesystem(dest_url, settings)
    manifest_path = _join(root, MANIFEST)
    _call(lambda: _remove_if_present(fs, manifest_path), f"cannot replace {dest_url}{MANIFEST}")

    def upload(relative: str) -> OutputFile:
        local = src / relative
        size, digest = local.stat().st_size, _sha256(local)
        remote = _join(root, relative)
        _call(
            lambda: fs.put_file(str(local), remote), f"cannot upload {fs.unstrip_protocol(remote)}"
        )
        return OutputFile(path=relative, size=size, sha256=digest)

    outputs = _run_all(upload, relatives, concurrency)
    _check_uploaded(fs, root, dest_url, outputs)
    manifest = Manifest(url=dest_url, created_at=datetime.now(UTC), files=outputs)
    _call(
        lambda: _write_manifest(fs, manifest_path, manifest),
        f"cannot write the manifest of {dest_url}",
    )
    return manifest


def manifest_exists(dest_url: str, settings: Settings) -> bool:
    """Whether ``dest_url`` holds a complete upload (its ``manifest.json``)."""
    fs, root = filesystem(dest_url, settings)
    return _call(lambda: fs.exists(_join(root, MANIFEST)), f"cannot read {dest_url}")


def read_manifest(dest_url: str, settings: Settings) -> Manifest:
    """The manifest of a complete upload at ``dest_url``."""
    fs, root = filesystem(dest_url, settings)
    data = _call(lambda: fs.cat_file(_join(root, MANIFEST)), f"cannot read {dest_url}{MANIFEST}")
    return Manifest.model_validate_json(data)


def _output_files(src: Path) -> list[str]:
    relatives = []
    for directory, dirnames, filenames in os.walk(src):
        for name in [*dirnames, *filenames]:
            path = Path(directory, name)
            if path.is_symlink():
                raise StorageError(
                    f"output {path.relative_to(src)} is a symbolic link: outputs must be "
                    "regular files (a link could upload files from outside the work dir)",
                    transient=False,
                    subtype="unsafe_path",
                )
        relatives.extend(Path(directory, name).relative_to(src).as_posix() for name in filenames)
    if MANIFEST in relatives:
        raise StorageError(
            f"output {MANIFEST} clashes with the manifest jobline writes; rename it",
            transient=False,
            subtype="reserved_name",
        )
    return sorted(relatives)


def _remove_if_present(fs: fsspec.AbstractFileSystem, path: str) -> None:
    if fs.exists(path):
        fs.rm_file(path)


def _check_uploaded(
    fs: fsspec.AbstractFileSystem, root: str, dest_url: str, outputs: list[OutputFile]
) -> None:
    """One listing confirms every upload landed with its size."""
    listed = _call(lambda: _find(fs, root), f"cannot list {dest_url}")
    sizes = {_relative_to(root, name): info.get("size") for name, info in listed.items()}
    for output in outputs:
        if sizes.get(output.path) != output.size:
            raise StorageError(
                f"upload of {output.path} to {dest_url} has size {sizes.get(output.path)}, "
                f"expected {output.size}",
                subtype="size_mismatch",
            )


def _write_manifest(fs: fsspec.AbstractFileSystem, path: str, manifest: Manifest) -> None:
    data = json.dumps(manifest.model_dump(mode="json"), indent=2).encode()
    if isinstance(fs, LocalFileSystem):
        # A rename is atomic on a local disk: readers never see half a manifest.
        partial = path + ".part"
        fs.pipe_file(partial, data)
        os.replace(partial, path)
    else:
        fs.pipe_file(path, data)  # one PUT: atomic on object storage


# ------------------------------------------------------------------------ expired outputs


def remove_product_folder(job_type: JobType, job: Job, settings: Settings) -> bool:
    """Delete an expired job's outputs: its own product folder, nothing else; returns whether
    something was removed.

    Checked here, at deletion time, whatever the database says: the folder is the one the
    job's type and record name (:func:`jobtypes.locations.product_folder`, strictly under the
    output storage), the job's ``output_path`` must name that same folder, and on a local disk
    the folder's real path (symbolic links followed) must still lie under the storage's real
    path. Anything else raises :class:`StorageError` (``unsafe_path``) and deletes nothing.
    """
    folder = product_folder(job_type, job)
    if job.output_path is None or not same_location(job.output_path, folder):
        raise StorageError(
            f"job {job.id}: output_path {job.output_path!r} is not its product folder "
            f"{folder}; nothing deleted",
            transient=False,
            subtype="unsafe_path",
        )
    fs, path = filesystem(folder, settings)
    _, root = filesystem(job_type.output_url, settings)
    inside = path.startswith(root.rstrip("/") + "/") and path.rstrip("/") != root.rstrip("/")
    if inside and isinstance(fs, LocalFileSystem):
        real_root = os.path.realpath(root)
        inside = os.path.realpath(path).startswith(real_root.rstrip(os.sep) + os.sep)
    if not inside:
        raise StorageError(
            f"job {job.id}: {folder} resolves outside the output storage {job_type.output_url}; "
            "nothing deleted",
            transient=False,
            subtype="unsafe_path",
        )
    if not fs.exists(path):
        return False
    _call(lambda: fs.rm(path, recursive=True), f"cannot delete {folder}")
    return True


# ----------------------------------------------------------------------------- work dirs


def remove_work_dir(path: Path, keep: bool) -> bool:
    """Remove a job's work dir unless ``keep``; returns whether something was removed.

    An empty path is nothing to remove; the filesystem root or a directory holding the current
    one is refused.
    """
    if keep or str(path) in ("", "."):
        return False
    target = Path(path).resolve()
    if target == Path(target.anchor) or Path.cwd().resolve().is_relative_to(target):
        raise ValueError(f"work dir {path}: refusing to remove a root or the current directory")
    if not target.exists():
        return False
    shutil.rmtree(target, ignore_errors=True)
    return True


# ------------------------------------------------------------------------------ watermarks


def watermark_window(
    store: JobStore,
    job_type_name: str,
    now: datetime,
    since: datetime | None = None,
    until: datetime | None = None,
    overlap: timedelta = timedelta(hours=1),
    look_back: timedelta = timedelta(days=3),
) -> tuple[datetime, datetime]:
    """The discovery window ``[since, until)``: explicit bounds win; otherwise from the stored
    watermark minus ``overlap`` (late listings are caught again; jobs dedupe by key), or
    ``now - look_back`` the first time, up to ``now``."""
    end = until or now
    if since is not None:
        return since, end
    stored = store.get_meta(WATERMARK_PREFIX + job_type_name)
    start = datetime.fromisoformat(stored) - overlap if stored else now - look_back
    return min(start, end), end


def advance_watermark(store: JobStore, job_type_name: str, newest_seen: datetime) -> datetime:
    """Record ``newest_seen`` as the job type's watermark if it is newer; returns the watermark.

    Read then write: one discovery per job type at a time (its deployment's concurrency limit)
    is assumed; a racing older value could move it back by one window at worst.
    """
    key = WATERMARK_PREFIX + job_type_name
    newest = newest_seen.astimezone(UTC)
    stored = store.get_meta(key)
    current = datetime.fromisoformat(stored) if stored else None
    if current is not None and current >= newest:
        return current
    store.set_meta(key, newest.isoformat(timespec="microseconds"))
    return newest


# --------------------------------------------------------------------------------- helpers


def _call(action: Callable[[], T], what: str) -> T:
    """Run one storage operation; driver errors become transient :class:`StorageError`."""
    try:
        return action()
    except StorageError:
        raise
    except FileNotFoundError as error:
        raise StorageError(f"{what}: not found ({error})", subtype="missing_object") from error
    except Exception as error:  # fsspec backends raise many error families
        raise StorageError(f"{what}: {type(error).__name__}: {error}") from error


def _run_all(action: Callable[[Any], T], items: Iterable[Any], concurrency: int) -> list[T]:
    """``action`` on every item with up to ``concurrency`` threads, results in item order; the
    first failure cancels what has not started and is raised."""
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(items)))) as pool:
        futures: list[Future[T]] = [pool.submit(action, item) for item in items]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f in done and f.exception() is not None), None)
        if failed is not None:
            for future in futures:
                future.cancel()
            raise failed.exception()  # type: ignore[misc]
    return [future.result() for future in futures]
