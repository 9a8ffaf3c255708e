"""Streaming readers for prompt sets: JSONL, Parquet, a glob or folder of them, a Hugging Face dataset.

Every reader yields ``InputRow``s one at a time, reading in chunks (lines, Parquet record batches,
dataset slices), so memory stays flat however large the input. Each row carries where it came from,
so that an error can name the file and the line.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import json
import lzma
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..config import InputSpec
from ..errors import JobError
from ..storage import ObjectFile, glob_root, is_url, list_objects

SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
COMPRESSED = (".gz", ".zst", ".bz2", ".xz")  # JSONL only; read by their magic bytes, not their names
CHUNK_ROWS = 4096


@dataclass(frozen=True)
class InputRow:
    index: int  # 0-based position in the whole input; the default id
    where: str  # "file, line N" or "file, row N", for error messages
    data: dict[str, Any]


def describe_source(spec: InputSpec) -> str:
    return spec.path if spec.path is not None else f"dataset {spec.dataset}"


InputFile = Path | ObjectFile  # a local file, or an object in a store (storage.py)


def resolve_files(spec: InputSpec) -> list[InputFile]:
    """The input files, in a stable order; a clear error if there are none."""
    assert spec.path is not None
    raw = spec.path
    files = _resolve_objects(raw) if is_url(raw) else _resolve_local(raw)
    for f in files:
        if spec.format == "auto" and _suffix(f) not in SUFFIXES:
            raise JobError(f"{f}: unknown input format {_suffix(f) or '(no suffix)'!r}; "
                           f"use .jsonl, .json or .parquet (JSONL also compressed: .jsonl.gz, .jsonl.zst), "
                           "or set input.format")
    return files


def _resolve_objects(url: str) -> list[InputFile]:
    """An object, a prefix (a folder: the input files under it) or a glob of keys, in a store."""
    pattern = glob_root(url)
    found = list_objects(url, pattern)
    if pattern is not None and not found:
        raise JobError(f"input.path: no object matches {url!r}")
    if found is None:
        raise JobError(f"input.path: {url} does not exist")
    if pattern is None and not (len(found) == 1 and found[0].url == url.rstrip("/")):
        found = [f for f in found if _suffix(f) in SUFFIXES]  # a prefix, as a folder
        if not found:
            raise JobError(f"input.path: {url} holds no .jsonl, .json or .parquet object "
                           f"(JSONL may be compressed: {', '.join(COMPRESSED)})")
    return list(found)


def _resolve_local(raw: str) -> list[InputFile]:
    path = Path(raw)
    if any(c in raw for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(raw, recursive=True) if Path(p).is_file())
        if not files:
            raise JobError(f"input.path: no file matches {raw!r}")
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p) in SUFFIXES)
        if not files:
            raise JobError(f"input.path: folder {raw} holds no .jsonl, .json or .parquet file "
                           f"(JSONL may be compressed: {', '.join(COMPRESSED)})")
    elif path.exists():
        files = [path]
    else:
        raise JobError(f"input.path: {raw} does not exist")
    return files


def _suffix(path: InputFile) -> str:
    """The format suffix, under a compression suffix: data.jsonl.gz -> .jsonl."""
    if path.suffix in COMPRESSED:
        return Path(path.stem).suffix
    return path.suffix


def _format_of(spec: InputSpec, path: InputFile) -> str:
    return spec.format if spec.format != "auto" else SUFFIXES[_suffix(path)]


def open_raw(path: InputFile) -> BinaryIO:
    """The file's bytes as stored, as a stream (an object is read as it is needed, never whole)."""
    if isinstance(path, ObjectFile):
        return io.BufferedReader(path.open_stream(), buffer_size=1 << 20)
    return open(path, "rb")


def _open_bytes(path: InputFile) -> BinaryIO:
    """The file's bytes, decompressed when its first bytes say it is gzip, zstd, bzip2 or xz."""
    with open_raw(path) as f:
        magic = f.read(6)
    raw = open_raw(path)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(raw, "rb")
    if magic.startswith(b"BZh"):
        return bz2.open(raw, "rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(raw, "rb")
    if magic.startswith(b"\x28\xb5\x2f\xfd"):
        import pyarrow as pa

        raw.close()
        stream = path.open_stream() if isinstance(path, ObjectFile) else pa.OSFile(str(path))
        return io.BufferedReader(pa.CompressedInputStream(stream, "zstd"))
    return raw


def _parse_line(raw: bytes, where: str) -> dict[str, Any]:
    """One JSONL line as a row; a JobError that names the line for anything else."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JobError(f"{where}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                       "convert the file to UTF-8") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise JobError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from e
    except RecursionError as e:
        raise JobError(f"{where}: JSON nested too deeply to read") from e
    if not isinstance(data, dict):
        raise JobError(f"{where}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_jsonl(path: InputFile, start: int) -> Iterator[InputRow]:
    try:
        f = _open_bytes(path)
    except OSError as e:
        raise JobError(f"{path}: cannot read input: {e.strerror or e}") from e
    with f:
        index = start
        try:
            for lineno, raw in enumerate(f, 1):
                if lineno == 1:
                    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
                if not raw.strip():
                    continue
                where = f"{path}, line {lineno}"
                if lineno == 1 and raw.lstrip().startswith(b"["):
                    raise JobError(f"{where}: the file holds a JSON array; the input must be JSON Lines, one "
                                   "object per line (convert it with: jq -c '.[]' FILE > FILE.jsonl)")
                yield InputRow(index, where, _parse_line(raw, where))
                index += 1
        except (OSError, EOFError) as e:  # a cut-short or corrupt compressed file
            raise JobError(f"{path}: cannot read input: {type(e).__name__}: {e}") from e


def _read_parquet(path: InputFile, start: int) -> Iterator[InputRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path.open_random() if isinstance(path, ObjectFile) else path)
        index = start
        for batch in pf.iter_batches(batch_size=CHUNK_ROWS):
            for data in batch.to_pylist():
                yield InputRow(index, f"{path}, row {index - start + 1}", data)
                index += 1
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        raise JobError(f"{path}: not a readable Parquet file ({e})") from e


def _is_saved_dataset(folder: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` (load_dataset cannot read those)."""
    return any((folder / name).exists() for name in ("dataset_info.json", "dataset_dict.json", "state.json"))


def _load_dataset(spec: InputSpec):
    import datasets

    args = dict(spec.dataset or {})
    target = args.get("path")
    try:
        if target and _is_saved_dataset(Path(target)):
            ds = datasets.load_from_disk(target)
        else:
            ds = datasets.load_dataset(**args)
    except Exception as e:  # datasets raises many unrelated types for a bad source
        raise JobError(f"input.dataset {args}: cannot load dataset: {type(e).__name__}: {e}") from e
    if isinstance(ds, datasets.DatasetDict):
        split = args.get("split")
        if split is None:
            if len(ds) != 1:
                raise JobError(f"input.dataset: name a split (input.dataset.split); it has {', '.join(ds)}")
            split = next(iter(ds))
        ds = ds[split]
    return ds


def _read_dataset(spec: InputSpec) -> Iterator[InputRow]:
    ds = _load_dataset(spec)
    name = describe_source(spec)
    index = 0
    for chunk in ds.iter(batch_size=CHUNK_ROWS):
        cols = list(chunk)
        n = len(chunk[cols[0]]) if cols else 0
        for i in range(n):
            yield InputRow(index, f"{name}, row {index + 1}", {c: chunk[c][i] for c in cols})
            index += 1


def iter_rows(spec: InputSpec, limited: bool = True) -> Iterator[InputRow]:
    """Every input row in order, up to ``spec.limit`` (past it too when ``limited`` is False)."""
    rows = _read_dataset(spec) if spec.dataset is not None or spec.format == "hf" else _read_files(spec)
    for row in rows:
        if limited and spec.limit is not None and row.index >= spec.limit:
            return
        yield row


INVALID = "_batch_run_invalid"  # a row the reader could not make sense of: its problem, for pre-flight


def _read_openai(path: InputFile, start: int) -> Iterator[InputRow]:
    from .openai_batch import request_row

    for row in _read_jsonl(path, start):
        try:
            data = request_row(row.data, row.where)
        except JobError as e:  # keep reading: pre-flight reports every such line together
            data = {INVALID: str(e)}
        yield InputRow(row.index, row.where, data)


def _read_files(spec: InputSpec) -> Iterator[InputRow]:
    start = 0
    readers = {"jsonl": _read_jsonl, "parquet": _read_parquet, "openai": _read_openai}
    for path in resolve_files(spec):
        reader = readers[_format_of(spec, path)]
        for row in reader(path, start):
            yield row
            start = row.index + 1


def load_dataset(spec: InputSpec):
    """The Hugging Face dataset of ``input.dataset`` (its split), loaded as the reader loads it."""
    return _load_dataset(spec)


def row_id(spec: InputSpec, index: int, data: dict[str, Any]) -> Any:
    """A row's id: its id_column's value, else its index in the input."""
    return data.get(spec.id_column) if spec.id_column else str(index)
