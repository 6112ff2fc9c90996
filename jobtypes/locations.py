"""Where a job's products live, and whether a URL lies inside a storage root.

A job's outputs go to its **product folder**, ``<output storage>/<job type name>/<tile or
no-tile>/<output product id>/`` (:func:`product_folder`). Every part of that path comes from the
job type and the job's record, so each is checked to be one plain path segment: a product id of
``../..`` must never turn into a folder outside the output storage.

:func:`lies_within` decides containment on the URL's text alone (scheme, authority and path
segments), the same way for every scheme: no dot segments, no empty segments, no backslashes, no
query or fragment, and (strictly) below the root. The API checks ``output_path`` with it; expiry
checks the folder it is about to delete with it, whatever the database says.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from jobline.exceptions import StorageError

if TYPE_CHECKING:
    from db.models import Job
    from jobtypes.base import JobType

#: Tile folder of a job without a tile.
NO_TILE = "no-tile"


def url_parts(url: str) -> tuple[str, str, list[str]] | None:
    """(scheme, authority, path segments) of a URL, or None when its path is not plain: a dot
    or empty segment (also percent-encoded), a backslash, a control character, a query or a
    fragment. A trailing slash is not a segment."""
    if any(ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F for char in url):
        return None
    split = urlsplit(url)
    if not split.scheme or split.query or split.fragment or "?" in url or "#" in url:
        return None
    path = split.path
    if path.endswith("/"):
        path = path[:-1]
    segments = path.split("/")[1:] if path.startswith("/") else path.split("/")
    if path and not path.startswith("/"):
        return None
    for segment in segments:
        if not plain_segment(segment):
            return None
    return split.scheme.lower(), split.netloc, segments if path else []


def plain_segment(segment: str) -> bool:
    """True for a segment that names one entry of its folder (``..``, ``.``, ``a/b``, ``a\\b``,
    and their percent-encoded spellings do not)."""
    for form in (segment, unquote(segment)):
        if form in ("", ".", "..") or "/" in form or "\\" in form or "\x00" in form:
            return False
    return True


def lies_within(url: str, root: str, *, strictly: bool = True) -> bool:
    """True when ``url`` is ``root`` or below it (``strictly``: below it only)."""
    inner, outer = url_parts(url), url_parts(root)
    if inner is None or outer is None:
        return False
    (scheme, authority, segments), (root_scheme, root_authority, root_segments) = inner, outer
    if (scheme, authority) != (root_scheme, root_authority):
        return False
    if segments[: len(root_segments)] != root_segments:
        return False
    return len(segments) > len(root_segments) or not strictly


def same_location(first: str, second: str) -> bool:
    """True when two URLs name the same folder (a trailing slash apart)."""
    left, right = url_parts(first), url_parts(second)
    return left is not None and left == right


def product_folder(job_type: JobType, job: Job) -> str:
    """The job's product folder under the job type's output storage (with a trailing slash);
    :class:`StorageError` (not transient, ``unsafe_path``) when a part of it is not one plain
    path segment."""
    parts = {
        "job type name": job_type.name,
        "tile": job.tile_id or NO_TILE,
        "output product id": job_type.output_product_id(job),
    }
    for what, segment in parts.items():
        if not plain_segment(segment):
            raise StorageError(
                f"job {job.id}: its {what} {segment!r} is not one plain path segment, so it "
                "cannot name a folder of the output storage",
                transient=False,
                subtype="unsafe_path",
            )
    root = job_type.output_url.rstrip("/")
    folder = f"{root}/{'/'.join(parts.values())}/"
    if not lies_within(folder, root):
        raise StorageError(
            f"job {job.id}: its product folder {folder} does not lie under the output storage "
            f"{root}",
            transient=False,
            subtype="unsafe_path",
        )
    return folder
