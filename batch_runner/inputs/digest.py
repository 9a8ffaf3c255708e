"""Input content for the resume fingerprint: what the input holds, not its names and sizes.

An edit that keeps a file's size changes the answers, so a resumed run compares content. Each input
file is read in blocks of ``BLOCK_BYTES`` and hashed; the fingerprint holds each file's size and the
digest of its block digests, and ``job.json`` keeps the block digests with the line each block
starts in, so that a changed file is named with its first changed lines without a copy of the old
one. The bytes are hashed as they are on disk (compressed files too): uncompressed text is named by
lines, Parquet by the rows of its row groups (from its footer), anything else by byte offset. A
Hugging Face dataset is identified by its own content fingerprint.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import InputSpec
from ..errors import JobError
from ..storage import ObjectFile, is_url
from .readers import InputFile, load_dataset, open_raw, resolve_files

BLOCK_BYTES = 1 << 20  # 1 MiB: about 2,000 lines of 500 bytes per block, 500 blocks per 500 MB


@dataclass(frozen=True)
class FileContent:
    path: str  # resolved
    size: int
    sha256: str  # of the block digests, in order
    lines: bool  # plain text: each block's first line number means something
    blocks: list[tuple[int, str]]  # (the line the block's first byte is in, the block's digest)
    last_line: int = 0  # the number of the file's last line


@dataclass(frozen=True)
class InputContent:
    """What the input holds: its files' digests, or a dataset's content fingerprint."""

    files: list[FileContent]
    dataset: bool = False  # a Hugging Face dataset: no files of its own to hash
    dataset_fingerprint: str | None = None  # None: a dataset that has none (streamed)

    def identity(self) -> dict[str, Any]:
        """For the fingerprint: what must not change for a run to resume."""
        if self.dataset:
            return {"dataset_fingerprint": self.dataset_fingerprint}
        return {"files": {f.path: {"bytes": f.size, "sha256": f.sha256} for f in self.files}}

    def blocks(self) -> dict[str, Any]:
        """For job.json: each file's block digests, to name the first changed lines later."""
        return {"block_bytes": BLOCK_BYTES,
                "files": {f.path: {"lines": f.lines, "blocks": f.blocks} for f in self.files}}


def file_content(path: InputFile) -> FileContent:
    """Read the file once in blocks: a digest per block, the line each starts in, the whole's digest."""
    whole, blocks, line, size, tail = hashlib.sha256(), [], 1, 0, b"\n"
    try:
        with open_raw(path) as f:
            magic = f.peek(6)[:6]
            while chunk := f.read(BLOCK_BYTES):
                digest = hashlib.sha256(chunk).hexdigest()[:32]
                blocks.append((line, digest))
                whole.update(digest.encode())
                line += chunk.count(b"\n")
                size, tail = size + len(chunk), chunk[-1:]
    except OSError as e:
        raise JobError(f"{path}: cannot read input: {e.strerror or e}") from e
    last = line - 1 if tail == b"\n" else line  # a last line without its newline still counts
    return FileContent(str(path.resolve()), size, whole.hexdigest(), _is_text(magic), blocks, last)


def _is_text(magic: bytes) -> bool:
    """Not Parquet and not compressed (gzip, bzip2, xz, zstd): its newlines count lines."""
    return not magic.startswith((b"PAR1", b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd"))


def files_content(spec: InputSpec) -> InputContent:
    """The input files' content (empty for a dataset: see ``dataset_content``)."""
    if spec.dataset is not None or spec.format == "hf":
        return InputContent([])
    return InputContent([file_content(p) for p in resolve_files(spec)])


def dataset_content(spec: InputSpec) -> InputContent:
    """A Hugging Face dataset's content fingerprint (datasets computes it from its data files and
    the transforms applied); a dataset without one (streamed) is identified by its arguments only."""
    fp = getattr(load_dataset(spec), "_fingerprint", None)
    return InputContent([], True, str(fp) if fp else None)


def changed_files(recorded: dict[str, Any] | None, old: dict[str, Any], now: InputContent) -> list[str]:
    """What changed in the input files, one line each, naming the first changed lines where known.

    ``old`` is the recorded fingerprint's input identity, ``recorded`` job.json's block digests.
    """
    was, files = old.get("files", {}), {f.path: f for f in now.files}
    out = [f"input file {p}: no longer part of the input" for p in sorted(set(was) - set(files))]
    for path, f in sorted(files.items()):
        if path not in was:
            out.append(f"input file {path}: new in the input")
        elif was[path] != {"bytes": f.size, "sha256": f.sha256}:
            size = "same size" if was[path].get("bytes") == f.size else f"{was[path].get('bytes')} -> {f.size} bytes"
            where = _where(((recorded or {}).get("files") or {}).get(path), f, (recorded or {}).get("block_bytes"))
            out.append(f"input file {path} changed ({size}): {where}")
    return out


def _where(old: dict[str, Any] | None, now: FileContent, block_bytes: int) -> str:
    """Where the first changed block is: its lines, a Parquet file's rows, else its bytes."""
    if not old or "blocks" not in old or block_bytes != BLOCK_BYTES:
        return "its content differs"
    before = [tuple(b) for b in old["blocks"]]
    i = next((i for i, (a, b) in enumerate(zip(before, now.blocks)) if a != b), min(len(before), len(now.blocks)))
    if now.lines and old.get("lines"):
        start = now.blocks[i][0] if i < len(now.blocks) else before[i][0]
        end = now.blocks[i + 1][0] if i + 1 < len(now.blocks) else now.last_line
        return f"the first change is in lines {start}-{end}" if end >= start else f"lines from {start} on are gone"
    where = ObjectFile(now.path).open_random() if is_url(now.path) else Path(now.path)
    return _parquet_rows(where, i * BLOCK_BYTES) or f"its bytes differ from byte {i * BLOCK_BYTES:,} on"


def _parquet_rows(path: Any, offset: int) -> str | None:
    """The rows of the Parquet row groups in the changed block starting at ``offset`` (from the footer)."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
    except Exception:  # not Parquet (a compressed file): bytes it is
        return None
    first, rows = 0, []
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        chunks = [group.column(c) for c in range(group.num_columns)]
        start = min((c.dictionary_page_offset or c.data_page_offset) for c in chunks)
        end = max((c.dictionary_page_offset or c.data_page_offset) + c.total_compressed_size for c in chunks)
        if end > offset and start < offset + BLOCK_BYTES:
            rows += [first + 1, first + group.num_rows]
        first += group.num_rows
    return f"the first change is in rows {min(rows)}-{max(rows)}" if rows else "its footer differs"
