"""Paths and URIs through `pyarrow.fs`: local paths by default, `s3://`, `gs://`, `hdfs://` when asked.

A plain path or a `file://` URI is a local file and is used as a local path everywhere (so a `file://` run
gives the same bytes as a plain-path run). A remote URI is resolved with `pyarrow.fs.FileSystem.from_uri`;
for S3 the endpoint and region come from the usual environment variables (`AWS_ENDPOINT_URL_S3` or
`AWS_ENDPOINT_URL`, `AWS_REGION` or `AWS_DEFAULT_REGION`; credentials from `AWS_ACCESS_KEY_ID` /
`AWS_SECRET_ACCESS_KEY` through the SDK's default chain), so a local S3 server (moto, MinIO) works
without code changes. Each process resolves URIs from its own environment: Ray workers inherit the
environment the embedded Ray was started with.

Streams are opened with `compression=None`: pyarrow otherwise (de)compresses by file extension, and a
`.warc.gz` must be copied as its bytes (readers detect compression by magic bytes; offsets are of the
file as stored).

Only what the pipeline needs: list the files under a prefix (recursively, sorted, with sizes), read the
first bytes of a file, copy a file down to a local path or up from one, write bytes to an object.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pyarrow.fs as pafs

from common.errors import ConfigError, GLMCorpusError

REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs")
COPY_CHUNK_BYTES = 8 * 1024 * 1024
"""Bytes held in memory while copying a file (downloads and uploads are streamed in these pieces)."""

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(path: str) -> str:
    """The URI scheme of `path` (lowercase), or "" for a plain local path."""
    match = _SCHEME.match(str(path))
    return match.group(1).lower() if match else ""


def is_remote(path: str) -> bool:
    """True for a URI that names a remote filesystem; raises ConfigError for an unknown scheme."""
    kind = scheme(path)
    if kind in ("", "file"):
        return False
    if kind not in REMOTE_SCHEMES:
        raise ConfigError(
            f"unsupported URI scheme {kind!r} in {path}; use a local path, file://, "
            + ", ".join(f"{name}://" for name in REMOTE_SCHEMES if name not in ("gcs", "viewfs"))
        )
    return True


def local_path(path: str) -> str:
    """A plain path unchanged; a `file://` URI as the local path it names."""
    if scheme(path) != "file":
        return str(path)
    return _from_uri(path)[1]


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it for a path or URI (S3 settings from the environment)."""
    if not is_remote(uri):
        return pafs.LocalFileSystem(), local_path(uri)
    if scheme(uri) == "s3":
        uri = _with_s3_environment(uri)
    return _from_uri(uri)


def _from_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as exc:  # ArrowInvalid is a ValueError
        raise ConfigError(f"cannot open {_redacted(uri)}: {exc}") from None


def _with_s3_environment(uri: str) -> str:
    """Add `endpoint_override`, `scheme` and `region` from the environment unless the URI sets them.

    An explicit endpoint also stops pyarrow from asking AWS for the bucket's region (a network call).
    """
    parts = urlsplit(uri)
    query = dict(parse_qsl(parts.query))
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and "endpoint_override" not in query:
        target = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        query["endpoint_override"] = target.netloc
        query.setdefault("scheme", target.scheme)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        query.setdefault("region", region)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _redacted(uri: str) -> str:
    """The URI without user info or query (where credentials can be), for messages."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query=""))


@contextlib.contextmanager
def _errors(uri: str) -> Iterator[None]:
    """Storage errors (pyarrow raises OSError) as a GLMCorpusError that names the URI."""
    try:
        yield
    except OSError as exc:
        raise GLMCorpusError(f"{_redacted(uri)}: {exc.strerror or exc}") from None


def _bucket(path: str) -> str:
    return path.split("/", 1)[0]


def _check_bucket(fs: pafs.FileSystem, uri: str, path: str) -> None:
    """Object stores: a clear error when the bucket itself is missing."""
    if isinstance(fs, pafs.LocalFileSystem) or scheme(uri) in ("hdfs", "viewfs"):
        return
    if _info(fs, _bucket(path), uri).type == pafs.FileType.NotFound:
        raise ConfigError(f"{_redacted(uri)}: bucket {_bucket(path)!r} does not exist (or is not visible "
                          f"with these credentials)")


def _info(fs: pafs.FileSystem, path: str, uri: str) -> pafs.FileInfo:
    with _errors(uri):
        return fs.get_file_info(path)


def check_bucket(uri: str) -> None:
    """Fail early, with the bucket's name, when a remote URI's bucket does not exist."""
    fs, path = resolve(uri)
    _check_bucket(fs, uri, path)


def list_files(uri: str) -> list[tuple[str, int]]:
    """Every file under `uri` (a prefix/directory, recursively, or one file) as (URI, size), sorted by URI.

    The URIs are `uri` (without its query) followed by each file's path below it, so they keep the
    scheme and host the user wrote; a query, if any, is appended again so each URI opens on its own.
    """
    fs, root = resolve(uri)
    parts = urlsplit(uri)
    base = urlunsplit(parts._replace(query="")).rstrip("/")
    suffix = f"?{parts.query}" if parts.query else ""
    info = _info(fs, root, uri)
    if info.type == pafs.FileType.File:
        return [(f"{base}{suffix}", int(info.size))]
    if info.type == pafs.FileType.NotFound:
        _check_bucket(fs, uri, root)
        raise ConfigError(f"input {_redacted(uri)} does not exist")
    root = root.rstrip("/")
    with _errors(uri):
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    files = [(f"{base}{i.path[len(root):]}{suffix}", int(i.size)) for i in infos if i.type == pafs.FileType.File]
    return sorted(files)


def read_prefix(uri: str, size: int) -> bytes:
    """The first `size` bytes of a file (fewer if it is shorter): one ranged read on an object store."""
    fs, path = resolve(uri)
    with _errors(uri), fs.open_input_stream(path, compression=None) as stream:
        return stream.read(size)


def download(uri: str, dest: Path, expected_size: int | None = None) -> None:
    """Copy a file to the local path `dest`, streamed in `COPY_CHUNK_BYTES` pieces.

    `expected_size` (the size seen when the inputs were listed) guards against a file that changed or a
    transfer that ended early: its documents' offsets would silently differ.
    """
    fs, path = resolve(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    copied = 0
    with _errors(uri), fs.open_input_stream(path, compression=None) as source, open(dest, "wb") as target:
        while chunk := source.read(COPY_CHUNK_BYTES):
            target.write(chunk)
            copied += len(chunk)
    if expected_size is not None and copied != expected_size:
        dest.unlink(missing_ok=True)
        raise GLMCorpusError(f"{_redacted(uri)}: read {copied} bytes, expected {expected_size} (the file "
                             f"changed since the inputs were listed?)")


def upload(src: Path, uri: str) -> None:
    """Copy the local file `src` to `uri`, streamed; on S3 and GCS the object appears whole or not at all."""
    fs, path = resolve(uri)
    with _errors(uri), open(src, "rb") as source, fs.open_output_stream(path, compression=None) as target:
        while chunk := source.read(COPY_CHUNK_BYTES):
            target.write(chunk)


def write_bytes(uri: str, data: bytes) -> None:
    """Write one object/file with the given bytes."""
    fs, path = resolve(uri)
    with _errors(uri), fs.open_output_stream(path, compression=None) as target:
        target.write(data)


def read_bytes(uri: str) -> bytes | None:
    """A file's bytes, or None when it does not exist."""
    fs, path = resolve(uri)
    if _info(fs, path, uri).type != pafs.FileType.File:
        return None
    with _errors(uri), fs.open_input_stream(path, compression=None) as stream:
        return stream.read()


def delete(uri: str) -> None:
    """Remove a file if it exists."""
    fs, path = resolve(uri)
    if _info(fs, path, uri).type == pafs.FileType.File:
        with _errors(uri):
            fs.delete_file(path)


def join(uri: str, relative: str) -> str:
    """`uri` / `relative` (a POSIX relative path), keeping the URI's query at the end."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{relative}"))
