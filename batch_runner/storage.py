"""Object storage: ``s3://``, ``gs://`` and ``hf://`` URLs as pyarrow file systems.

Local paths never come here: they keep the plain ``open``/``Path`` code of the readers. A URL is
read through a pyarrow ``FileSystem`` (``S3FileSystem`` and ``GcsFileSystem`` ship with pyarrow;
``hf://`` goes through huggingface_hub's fsspec file system), as a stream: never a whole object in
memory. Credentials come from each library's usual environment (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``,
``GOOGLE_APPLICATION_CREDENTIALS``, ``HF_TOKEN``...); pyarrow's S3 does not read ``AWS_ENDPOINT_URL``
itself, so it is passed on here (``AWS_ENDPOINT_URL_S3`` first, as the AWS SDKs do).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import PurePosixPath
from typing import Any

from .errors import JobError

SCHEMES = {"s3": "s3", "gs": "gs", "gcs": "gs", "hf": "hf"}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")


def is_url(text: object) -> bool:
    """An object-store URL (or any ``scheme://``: an unknown scheme is refused by ``split``)."""
    return isinstance(text, str) and _URL.match(text) is not None


def split(url: str) -> tuple[str, str]:
    """(scheme, path inside the store); a clear error for a scheme batch-run cannot read."""
    m = _URL.match(url)
    if m is None:
        raise JobError(f"{url}: not an object-store URL")
    scheme = SCHEMES.get(m.group(1).lower())
    if scheme is None:
        raise JobError(f"{url}: unknown storage scheme {m.group(1)!r}; use a local path, s3://, gs:// or hf://")
    path = m.group(2).strip("/")
    if not path:
        raise JobError(f"{url}: names no bucket")
    return scheme, path


@cache
def _filesystem(scheme: str, endpoint: str | None, region: str | None) -> Any:
    import pyarrow.fs as pafs

    if scheme == "s3":
        return pafs.S3FileSystem(endpoint_override=endpoint, region=region or "us-east-1")
    if scheme == "gs":
        return pafs.GcsFileSystem()
    try:
        from huggingface_hub import HfFileSystem
    except ImportError as e:
        raise JobError("hf:// paths need the huggingface_hub package: pip install huggingface_hub") from e
    return pafs.PyFileSystem(pafs.FSSpecHandler(HfFileSystem()))


def filesystem(url: str) -> tuple[Any, str]:
    """The pyarrow FileSystem of a URL and the path inside it (``bucket/key`` for S3 and GCS)."""
    scheme, path = split(url)
    env = os.environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") if scheme == "s3" else None
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") if scheme == "s3" else None
    return _filesystem(scheme, endpoint, region), path


def join(url: str, *names: str) -> str:
    return "/".join([url.rstrip("/"), *names])


@dataclass(frozen=True)
class ObjectFile:
    """One input object, standing where a local input file's ``Path`` stands: its name and suffixes
    for the format, its URL in messages and in the fingerprint."""

    url: str

    def __str__(self) -> str:
        return self.url

    @property
    def _pure(self) -> PurePosixPath:
        return PurePosixPath(split(self.url)[1])

    @property
    def name(self) -> str:
        return self._pure.name

    @property
    def suffix(self) -> str:
        return self._pure.suffix

    @property
    def stem(self) -> str:
        return self._pure.stem

    def resolve(self) -> ObjectFile:
        return self

    def open_stream(self) -> Any:
        """The object's bytes as a sequential stream (a file object)."""
        fs, path = filesystem(self.url)
        return fs.open_input_stream(path)

    def open_random(self) -> Any:
        """The object as a seekable file (Parquet reads its footer, then the row groups it needs)."""
        fs, path = filesystem(self.url)
        return fs.open_input_file(path)


def list_objects(url: str, glob: str | None = None) -> list[ObjectFile] | None:
    """The objects under ``url`` (a prefix, recursively), or the one object it names; None where
    nothing is there. With ``glob`` (fnmatch-style, ``**`` across folders), only the objects whose
    key matches it."""
    import pyarrow.fs as pafs

    scheme = url.split("://", 1)[0]
    if glob is not None:
        root = url[:len(url) - len(glob)]
        fs, base = filesystem(root)
        infos = _listing(fs, base)
        rx = _glob_regex(split(url)[1])
        return [ObjectFile(f"{scheme}://{i.path}") for i in infos if rx.match(i.path)]
    fs, path = filesystem(url)
    try:
        info = fs.get_file_info(path)
    except OSError as e:
        raise JobError(f"{url}: cannot read: {e}") from e
    if info.type == pafs.FileType.File:
        return [ObjectFile(url)]
    infos = _listing(fs, path)
    return [ObjectFile(f"{scheme}://{i.path}") for i in infos] or None


def _listing(fs: Any, path: str) -> list[Any]:
    import pyarrow.fs as pafs

    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    except OSError as e:
        raise JobError(f"{path}: cannot list: {e}") from e
    return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """fnmatch with ``*`` inside one folder and ``**`` across folders, as glob.glob(recursive=True)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def glob_root(url: str) -> str | None:
    """The part of a URL from its first wildcard folder on (the glob), or None without one."""
    m = re.search(r"[*?\[]", url)
    if m is None:
        return None
    cut = url.rfind("/", 0, m.start())
    return url[cut + 1:]
