"""Small images built locally, with no registry: ``FROM scratch`` plus a static busybox.

The demo job type and the tests run their processing in such images: busybox gives a shell and
the usual tools (sh, awk, sleep, cat, ls, ip, ...), and the job's scripts are added at their
container paths. The build context is assembled in memory and its timestamps are fixed, so
building the same files twice hits the engine's build cache.
"""

from __future__ import annotations

import hashlib
import io
import struct
import subprocess
import tarfile
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath

import docker
import docker.errors

from jobline.exceptions import ConfigurationError, ProcessingError

BUSYBOX_CANDIDATES = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
#: Applets linked when ``busybox --list`` cannot be asked (the tools jobline's scripts rely on).
FALLBACK_APPLETS = (
    "sh", "ash", "awk", "sleep", "cat", "ls", "ip", "mkdir", "echo", "cp", "mv", "rm", "touch",
    "head", "tail", "wc", "grep", "sed", "sort", "date", "env", "printf", "test", "[", "true",
    "false", "id", "sha256sum", "md5sum", "find", "xargs", "tr", "cut", "basename", "dirname",
    "stat", "du", "df", "seq", "dd", "hostname", "uname", "tee", "gzip", "gunzip", "tar",
)  # fmt: skip
#: Account names for the users a job container may run as (root and "nobody").
PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n"
GROUP = b"root:x:0:\nnogroup:x:65534:\n"
#: Label holding a digest of the build context, so :func:`ensure_image` can tell a stale image.
CONTEXT_LABEL = "jobline.context_sha256"

ImageFiles = Mapping[str, bytes | Path]
ImageBuilder = Callable[[docker.DockerClient, str], str]


def find_static_busybox() -> Path:
    """The host's statically linked busybox; :class:`ConfigurationError` when there is none."""
    for candidate in BUSYBOX_CANDIDATES:
        if candidate.is_file() and _is_static_elf(candidate):
            return candidate
    raise ConfigurationError(
        "no statically linked busybox found at "
        + " or ".join(str(path) for path in BUSYBOX_CANDIDATES)
        + "; install the busybox-static package (scripts/ensure-docker.sh does)"
    )


def _is_static_elf(path: Path) -> bool:
    """Whether ``path`` is a 64-bit little-endian ELF without a program interpreter."""
    with path.open("rb") as binary:
        header = binary.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            return False
        (phoff,) = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        binary.seek(phoff)
        table = binary.read(phentsize * phnum)
    pt_interp = 3  # a dynamically linked binary names its loader in a PT_INTERP entry
    return all(
        struct.unpack_from("<I", table, index * phentsize)[0] != pt_interp for index in range(phnum)
    )


def busybox_applets(busybox: Path) -> list[str]:
    """The applets the binary provides (falls back to a fixed list if it cannot be asked)."""
    try:
        listed = subprocess.run(
            [str(busybox), "--list"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        listed = []
    return sorted({name for name in listed if "/" not in name} or set(FALLBACK_APPLETS))


def build_context(files: ImageFiles, busybox: Path | None = None) -> bytes:
    """The build context (an uncompressed tar) of a busybox image holding ``files``."""
    busybox = busybox or find_static_busybox()
    entries = _rootfs_entries(files, busybox)
    dockerfile = (
        b'FROM scratch\nCOPY rootfs/ /\nENV PATH=/usr/local/bin:/usr/bin:/bin\nCMD ["/bin/sh"]\n'
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add_file(tar, "Dockerfile", dockerfile, 0o644)
        for directory in sorted(_parent_dirs(entries) | {"tmp"}):
            _add_dir(tar, f"rootfs/{directory}", 0o1777 if directory == "tmp" else 0o755)
        for name, (content, mode) in sorted(entries.items()):
            if isinstance(content, str):
                _add_symlink(tar, f"rootfs/{name}", content)
            else:
                _add_file(tar, f"rootfs/{name}", content, mode)
    return buffer.getvalue()


def build_busybox_image(
    client: docker.DockerClient,
    tag: str,
    files: ImageFiles | None = None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """Build ``tag`` from scratch: static busybox at /bin with its applets linked, ``/tmp``, and
    ``files`` (container path -> content or host file). Returns the image id."""
    context = build_context(files or {})
    all_labels = {**(labels or {}), CONTEXT_LABEL: hashlib.sha256(context).hexdigest()}
    try:
        image, _ = client.images.build(
            fileobj=io.BytesIO(context),
            custom_context=True,
            tag=tag,
            labels=all_labels,
            rm=True,
            forcerm=True,
            network_mode="none",
        )
    except (docker.errors.BuildError, docker.errors.APIError) as error:
        raise ProcessingError(f"building image {tag!r} failed: {error}", subtype="image") from None
    return str(image.id)


def context_digest(files: ImageFiles) -> str:
    """The digest :func:`build_busybox_image` records for these files (see :func:`ensure_image`)."""
    return hashlib.sha256(build_context(files)).hexdigest()


def ensure_image(
    client: docker.DockerClient,
    tag: str,
    builder: ImageBuilder,
    expected_digest: str | None = None,
) -> str:
    """The id of image ``tag``, built with ``builder(client, tag)`` when it is absent, or when
    ``expected_digest`` is given and differs from the image's recorded context digest."""
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return builder(client, tag)
    if expected_digest is not None and image.labels.get(CONTEXT_LABEL) != expected_digest:
        return builder(client, tag)
    return str(image.id)


# ------------------------------------------------------------------------------ tar assembly


def _rootfs_entries(files: ImageFiles, busybox: Path) -> dict[str, tuple[bytes | str, int]]:
    """Relative path -> (bytes, mode) for a file or (link target, 0) for a symlink."""
    entries: dict[str, tuple[bytes | str, int]] = {"bin/busybox": (busybox.read_bytes(), 0o755)}
    for applet in busybox_applets(busybox):
        if applet != "busybox":
            entries[f"bin/{applet}"] = ("busybox", 0)
    entries["etc/passwd"] = (PASSWD, 0o644)
    entries["etc/group"] = (GROUP, 0o644)
    for container_path, content in files.items():
        entries[_relative_container_path(container_path)] = _file_content(container_path, content)
    return entries


def _relative_container_path(container_path: str) -> str:
    path = PurePosixPath(container_path)
    if not path.is_absolute() or ".." in path.parts or path == PurePosixPath("/"):
        raise ConfigurationError(
            f"files: {container_path!r} must be an absolute container path without '..'"
        )
    return str(path.relative_to("/"))


def _file_content(container_path: str, content: bytes | Path) -> tuple[bytes, int]:
    if isinstance(content, Path):
        if not content.is_file():
            raise ConfigurationError(f"files[{container_path!r}]: {content} is not a file")
        executable = content.stat().st_mode & 0o111 or content.read_bytes().startswith(b"#!")
        return content.read_bytes(), 0o755 if executable else 0o644
    if not isinstance(content, bytes):
        raise ConfigurationError(f"files[{container_path!r}]: content must be bytes or a Path")
    return content, 0o755 if content.startswith(b"#!") else 0o644


def _parent_dirs(entries: Mapping[str, object]) -> set[str]:
    parents = set()
    for name in entries:
        parent = PurePosixPath(name).parent
        while parent != PurePosixPath("."):
            parents.add(str(parent))
            parent = parent.parent
    return parents


def _add_file(tar: tarfile.TarFile, name: str, content: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(content), mode, 0
    tar.addfile(info, io.BytesIO(content))


def _add_dir(tar: tarfile.TarFile, name: str, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, 0
    tar.addfile(info)


def _add_symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, target, 0o777, 0
    tar.addfile(info)


# ------------------------------------------------------------------------------ the demo image


def ensure_demo_image(client: docker.DockerClient | None = None) -> str:
    """Build the demo job type's image locally when it is missing or its script changed: the
    demo must run where no registry can be reached."""
    from jobtypes.demo import ASSETS, SCRIPT_IN_IMAGE, SnowCover

    files: ImageFiles = {SCRIPT_IN_IMAGE: ASSETS / "snow_cover.sh"}
    return ensure_image(
        client or docker.from_env(),
        SnowCover.image,
        lambda c, tag: build_busybox_image(c, tag, files),
        context_digest(files),
    )
