"""Object storage: ``s3://``, ``gs://`` and ``hf://`` URLs as pyarrow file systems.

Local paths never come here: they keep the plain ``open``/``Path`` code of the readers. A URL is
read through a pyarrow ``FileSystem`` (``S3FileSystem`` and ``GcsFileSystem`` ship with pyarrow;
``hf://`` goes through huggingface_hub's fsspec file system), as a stream: never a whole object in
memory. Credentials come from each library's usual environment (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``,
``GOOGLE_APPLICATION_CREDENTIALS``, ``HF_TOKEN``...); pyarrow's S3 does not read ``AWS_ENDPOINT_URL``
itself, so it is passed on here (``AWS_ENDPOINT_URL_S3`` first, as the AWS SDKs do).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import RESUME_ADVICE, BatchRunnerError, JobError, ResumeConflict, StorageError

log = logging.getLogger("batch_runner")

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


# --- an output in S3 ------------------------------------------------------------------------------
#
# batch-runner works on a local copy of the output (``OutputCopy``) and passes each file it writes
# or removes on to the bucket at once (atomic.publishing): an object appears whole or not at all
# (a single PUT, or a multipart upload that is invisible until it completes). The bucket is the
# truth: each run starts from a new copy of it, so a part written locally but never uploaded (a
# kill -9 in between) is not counted, and its rows run again. A run holds its shard through a
# lease object written with conditional requests (``Lease``), since a store has no flock.

LEASE_TTL_S = float(os.environ.get("BATCH_RUN_LEASE_TTL_S", "60"))  # a dead holder's lease expires after this
LOCKS = "_locks"  # the leases' folder in the output; never copied


def s3_output(url: str) -> tuple[Any, str, str]:
    """(boto3 client, bucket, key prefix) of an ``s3://`` output; a clear error for another store."""
    scheme, path = split(url)
    if scheme != "s3":
        raise JobError(f"output.dir: {url}: batch-run writes outputs to local folders and s3:// only (a lease "
                       "needs S3's conditional writes); write locally and copy the results")
    try:
        import boto3
    except ImportError as e:
        raise JobError("an s3:// output.dir needs boto3: pip install 'batch-runner[s3]' (or pip install boto3)") from e
    bucket, _, prefix = path.partition("/")
    if not prefix:
        raise JobError(f"output.dir: {url}: name a folder inside the bucket (s3://{bucket}/<name>)")
    return boto3.client("s3", config=_client_config()), bucket, prefix.rstrip("/")


def _client_config() -> Any:
    """Every request bounded well inside the lease's margin: a write that passed ``Lease.check`` (at
    most TTL/2 after the last renewal) ends, or fails, before the lease could expire (TTL): two
    attempts of at most a tenth of the TTL to connect and a tenth per read."""
    from botocore.config import Config

    step = max(LEASE_TTL_S / 10, 1.0)
    return Config(connect_timeout=step, read_timeout=step, retries={"total_max_attempts": 2, "mode": "standard"})


def read_text(url: str, name: str) -> str | None:
    """The text of the object ``name`` of the S3 output at ``url`` (its job.json, a few kB), or None
    where it is not there."""
    client, bucket, prefix = s3_output(url)
    key = f"{prefix}/{name}"
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    except Exception as e:
        if _code(e) in ("NoSuchKey", "404"):
            return None
        raise _failed(f"s3://{bucket}/{key}", f"{type(e).__name__}: {e}") from e


def _failed(where: str, reason: str, remedy: str = "check the bucket, its endpoint and credentials") -> StorageError:
    """A request to the store failed: what, where, and that a rerun resumes (what was uploaded stays)."""
    return StorageError(where, OSError(None, reason),
                        RESUME_ADVICE.replace("free space (or make the folder writable)", remedy))


def _code(e: Exception) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


class OutputCopy:
    """The local copy of an S3 output, and what passes each write on to the bucket (atomic.Publisher)."""

    def __init__(self, url: str, local: Path):
        self.url, self.local = url.rstrip("/"), local
        self.client, self.bucket, self.prefix = s3_output(url)
        self.lease: Lease | None = None

    def key(self, path: Path) -> str:
        return f"{self.prefix}/{path.resolve().relative_to(self.local.resolve()).as_posix()}"

    def keys(self) -> Iterator[tuple[str, str]]:
        """(key, the path inside the output) of every object of the output, but the leases."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + "/")
        try:
            for page in pages:  # a thousand keys a page, one page in memory at a time
                for obj in page.get("Contents", []):
                    inside = obj["Key"][len(self.prefix) + 1:]
                    if inside and not inside.startswith(LOCKS + "/") and not inside.endswith("/"):
                        yield obj["Key"], inside
        except Exception as e:  # botocore's, while listing (the consumer's own never come in here)
            raise _failed(f"s3://{self.bucket}/{self.prefix}/", f"{type(e).__name__}: {e}") from e

    def download(self, wanted: Callable[[str], bool] = lambda inside: True) -> None:
        """Copy the output's objects (those ``wanted``) into the local folder, each streamed to disk."""
        for key, inside in self.keys():
            if wanted(inside):
                target = self.local / inside
                target.parent.mkdir(parents=True, exist_ok=True)
                self._call(key, self.client.download_file, self.bucket, key, str(target))

    def leases(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(key, holder) of each lease object of the output."""
        found = self._call(f"{self.prefix}/{LOCKS}/", self.client.list_objects_v2, Bucket=self.bucket,
                           Prefix=f"{self.prefix}/{LOCKS}/")
        for obj in found.get("Contents", []):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read()
                yield obj["Key"], json.loads(body)
            except Exception:  # released since the listing, or not a lease batch-run wrote
                continue

    def written(self, path: Path) -> None:
        key = self.key(path)
        if self.lease is not None:
            self.lease.check()  # never a write on a shard another run may have taken over
        if path.name == "job.json":  # shards starting together: the first one's job.json stands
            self._create(path, key)
        else:  # upload_file: a single PUT, or above 8 MiB a multipart upload, invisible until complete
            self._call(key, self.client.upload_file, str(path), self.bucket, key)

    def _create(self, path: Path, key: str) -> None:
        # the job it records names the output by its URL, not by this passing copy (a few kB of JSON)
        body = path.read_bytes().replace(json.dumps(str(self.local))[1:-1].encode(), self.url.encode())
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*")
        except Exception as e:
            if _code(e) not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise _failed(f"s3://{self.bucket}/{key}", f"{type(e).__name__}: {e}") from e
            self._adopt(path, key)

    def _adopt(self, path: Path, key: str) -> None:
        """Another shard of the array created job.json first: where it records this very job (same
        fingerprint, so same shard count), its copy replaces ours, before any part is written, so
        that every part carries the output id it records; a different job is refused."""
        theirs = self._call(key, self.client.get_object, Bucket=self.bucket, Key=key)["Body"].read()
        ours, recorded = json.loads(path.read_text()), json.loads(theirs)
        same = (recorded.get("fingerprint_hash") == ours.get("fingerprint_hash")
                and (recorded.get("fingerprint") or {}).get("shards") == (ours.get("fingerprint") or {}).get("shards"))
        if not same:
            raise ResumeConflict(f"{self.url}: another run created job.json at the same moment for a different "
                                 "job; run again to see what differs, or write elsewhere with --output DIR")
        tmp = path.with_name(path.name + ".adopted")
        tmp.write_bytes(theirs)
        os.replace(tmp, path)  # the local copy only: the bucket holds this already
        log.info("%s: job.json was created by another shard of this job at the same moment; using it", self.url)

    def removed(self, path: Path) -> None:
        if self.lease is not None:
            self.lease.check()
        self._call(self.key(path), self.client.delete_object, Bucket=self.bucket, Key=self.key(path))

    def _call(self, key: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except Exception as e:  # botocore raises many types (no credentials, endpoint down, denied)
            raise _failed(f"s3://{self.bucket}/{key}", f"{type(e).__name__}: {e}") from e


@contextmanager
def local_copy(url: str, wanted: Callable[[str], bool] = lambda inside: True,
               lease: str | None = None) -> Iterator[Path]:
    """A local copy of the S3 output at ``url`` (the objects ``wanted``), every write in it passed on
    to the bucket; with ``lease`` (a shard label), under that shard's lease. Without one (status,
    merge, report), each shard whose lease is live shows as locked in the copy (a flock on its
    ``.lock-<shard>``, held by this process), so that they see it running as they do locally.
    Messages name the URL, not the copy. The copy is removed after: the bucket holds everything."""
    from .atomic import publishing

    with tempfile.TemporaryDirectory(prefix="batch-run-") as tmp:
        copy = OutputCopy(url, Path(tmp) / "out")
        copy.local.mkdir()
        held = Lease(copy, lease) if lease is not None else None
        locks: list[int] = []
        try:
            if held is not None:
                held.acquire()
            copy.lease = held
            copy.download(wanted)
            locks = [] if held is not None else _show_leases(copy)
            with publishing(copy.local, copy):
                yield copy.local
        except BatchRunnerError as e:
            raise _named(e, str(copy.local), copy.url) from e.__cause__
        finally:
            if held is not None:
                held.release()
            for fd in locks:
                os.close(fd)


def _named(e: BatchRunnerError, local: str, url: str) -> BatchRunnerError:
    """The error with the local copy's paths in its message written as the URL."""
    e.args = tuple(a.replace(local, url) if isinstance(a, str) else a for a in e.args)
    if isinstance(e, JobError):
        e.problems = [p.replace(local, url) for p in e.problems]
    return e


def _show_leases(copy: OutputCopy) -> list[int]:
    import fcntl

    fds = []
    for key, holder in copy.leases():
        if float(holder.get("expires", 0)) > time.time():
            fd = os.open(copy.local / f".lock-{PurePosixPath(key).stem}", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fds.append(fd)
    return fds


@contextmanager
def output_folder(text: str | os.PathLike) -> Iterator[Path]:
    """The output folder to look at (status, merge, report, results): a local path as it is, an
    ``s3://`` output as a whole local copy whose writes (merged/, report/) go on to the bucket."""
    if not is_url(str(text)):
        yield Path(text)
        return
    with local_copy(str(text)) as local:
        yield local


RENEW_EVERY = 6  # the lease is renewed every TTL/6: two misses still leave a run inside its TTL/2 margin
STOP_AFTER = 0.5  # a holder not renewed for TTL/2 stops writing: half a TTL of margin before it expires
WAIT_SLACK_S = 5.0  # how much past a lease's expiry a new run waits, at most (its clock against the holder's)


@dataclass
class Lease:
    """One shard of an S3 output, held by one run: the object ``_locks/<shard>.lease``.

    Created with ``If-None-Match: *`` (exactly one of two runs starting together gets it), renewed
    every sixth of ``LEASE_TTL_S`` by a thread with ``If-Match`` on its ETag, removed at the end. A
    holder that dies stops renewing. A new run that finds a lease waits for it: a holder seen
    renewing it meanwhile is alive, and the run is refused at once; a lease that expires unrenewed
    is taken over, again conditionally (``If-Match`` on the ETag first read), so that of two runs
    taking over one wins. A holder whose renewal finds its lease taken, or that could not renew for
    half the TTL, stops writing (``check``) rather than race the run that may hold it now.
    """

    copy: OutputCopy
    shard: str
    etag: str | None = None
    renewed: float = 0.0
    lost: bool = False  # a renewal found the lease taken over: no write from here on
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def key(self) -> str:
        return f"{self.copy.prefix}/{LOCKS}/{self.shard}.lease"

    def _body(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "ttl_s": LEASE_TTL_S,
                           "expires": time.time() + LEASE_TTL_S}).encode()

    def _put(self, **condition: str) -> bool:
        """Write the lease under a condition; False where the condition does not hold."""
        try:
            r = self.copy.client.put_object(Bucket=self.copy.bucket, Key=self.key, Body=self._body(), **condition)
        except Exception as e:
            if _code(e) in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise _failed(f"s3://{self.copy.bucket}/{self.key}", f"{type(e).__name__}: {e}") from e
        self.etag, self.renewed = r["ETag"], time.monotonic()
        return True

    def acquire(self) -> None:
        if not self._put(IfNoneMatch="*"):
            self._take_over()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{self.shard}", daemon=True)
        self._thread.start()

    def _read(self) -> tuple[dict[str, Any], str] | None:
        """The lease's holder and ETag, or None where there is no lease."""
        try:
            r = self.copy.client.get_object(Bucket=self.copy.bucket, Key=self.key)
            return json.loads(r["Body"].read()), r["ETag"]
        except Exception as e:
            if _code(e) != "NoSuchKey":
                raise _failed(f"s3://{self.copy.bucket}/{self.key}", f"{type(e).__name__}: {e}") from e
            return None

    def _take_over(self) -> None:
        found = self._read()
        if found is None:
            if self._put(IfNoneMatch="*"):  # released in between
                return
            raise ResumeConflict(self._busy({}, LEASE_TTL_S)) from None
        holder, etag = found
        left = float(holder.get("expires", 0)) - time.time()
        if left > LEASE_TTL_S + WAIT_SLACK_S:  # a holder with a longer TTL, or a clock far ahead of ours
            raise ResumeConflict(self._busy(holder, left))
        if left > 0:
            log.warning("%s: shard %s: its lease is held by %s (pid %s) for %.0f s more; waiting for it to "
                        "expire (a run that died) or be renewed (a live run: then this one stops)",
                        self.copy.url, self.shard, holder.get("host"), holder.get("pid"), left)
            if not self._wait_out(etag, left + 1.0):
                raise ResumeConflict(self._busy(holder, None))
        if not self._put(IfMatch=etag):  # renewed at the last moment, or another run took it over first
            raise ResumeConflict(self._busy(holder, None))
        log.warning("%s: shard %s: took over the expired lease of %s (pid %s); that run stopped renewing it",
                    self.copy.url, self.shard, holder.get("host"), holder.get("pid"))

    def _wait_out(self, etag: str, seconds: float) -> bool:
        """Wait ``seconds`` (bounded: the caller's lease time left, at most the TTL and a few
        seconds), looking every second whether the lease changed; True where it did not."""
        deadline = time.monotonic() + seconds
        while (now := time.monotonic()) < deadline:
            time.sleep(min(1.0, deadline - now))
            found = self._read()
            if found is None or found[1] != etag:  # renewed by a live holder, released, or taken
                return False
        return True

    def _busy(self, holder: dict[str, Any], left: float | None) -> str:
        who = f"{holder.get('host')} (pid {holder.get('pid')})" if holder else "another run"
        if left is None:
            return (f"{self.copy.url}: shard {self.shard} is being written by {who}: it renewed its lease "
                    f"{LOCKS}/{self.shard}.lease while this run waited, so it is alive; run again when it is done")
        return (f"{self.copy.url}: shard {self.shard} is being written by {who}: its lease "
                f"{LOCKS}/{self.shard}.lease is held for {left:.0f} s more. If that run died, its lease "
                f"expires by then (a lease lives {LEASE_TTL_S:.0f} s unless renewed); run again after that")

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_TTL_S / RENEW_EVERY):
            try:
                if not self._put(IfMatch=str(self.etag)):
                    self.lost = True
                    log.error("%s: shard %s: the lease was taken over by another run; this run stops writing",
                              self.copy.url, self.shard)
                    return
            except StorageError as e:  # the bucket unreachable for now: try again; check() decides
                log.warning("%s", e)

    def check(self) -> None:
        """Refuse a write where the lease was taken over, or may expire before the write ends (not
        renewed for half the TTL; each request is bounded well below the other half)."""
        where = f"s3://{self.copy.bucket}/{self.key}"
        if self.lost:
            raise _failed(where, f"another run took over shard {self.shard} (its lease was not renewed in "
                          "time); stopped writing", "make sure one run at a time writes each shard")
        if time.monotonic() - self.renewed > LEASE_TTL_S * STOP_AFTER:
            raise _failed(where, f"the lease was not renewed for {LEASE_TTL_S * STOP_AFTER:.0f} s, so another "
                          f"run may hold shard {self.shard} soon; stopped writing", "check that the bucket is reachable")

    def release(self) -> None:
        """Stop renewing and remove the lease, if this run holds it (never another run's)."""
        if self.etag is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            self.copy.client.delete_object(Bucket=self.copy.bucket, Key=self.key, IfMatch=self.etag)
        except Exception as e:  # taken over, or the bucket unreachable: it expires by itself
            log.warning("%s: shard %s: lease not removed (%s); it expires after %.0f s",
                        self.copy.url, self.shard, _code(e) or e, LEASE_TTL_S)
