"""Dedup state on disk, so memory does not grow with the record count (`clean`, `inspect`).

Both indexes append fixed-width rows to partition files chosen by the top bits of a hash, then
group one partition at a time in numpy: equal keys always land in the same partition, so the
whole corpus is never sorted in memory (a radix-partitioned external group-by). Peak memory is
one partition (records x rows per record / PARTITIONS) plus what the groups themselves hold.

- `ExactIndex`: a 128-bit BLAKE2b digest per record; the first record of every digest keeps,
  the later ones are duplicates of it.
- `NearIndex`: MinHash signatures are appended to one file (uint32, `num_perm` per record) and
  every LSH band's 64-bit bucket key to the partitions. A partition's buckets yield the same
  candidate pairs as `dedup._bucket_pairs` (each member with its bucket's first member and with
  the member before it), verified against the threshold by reading the two signatures back from
  the file; the groups are the connected components, as `dedup.near_duplicate_groups` forms
  them. Same signatures, same bands, same verification: the same groups.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from tunesmith.data.quality.dedup import band_keys, lsh_bands

PARTITIONS = 64
_SHIFT = np.uint64(64 - 6)  # top 6 bits of a key pick one of the 64 partitions
_VERIFY_ROWS = 8192  # candidate pairs verified at once (reads <= 16384 rows: 8 MB)


def text_digest(text: str) -> bytes:
    """16-byte BLAKE2b of a text (lone surrogates passed through, never an error)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class _Partitions:
    """Rows of one numpy dtype appended to PARTITIONS files, read back one file at a time."""

    def __init__(self, folder: Path, dtype: np.dtype) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(dtype)
        self.paths = [self.folder / f"part{p:02d}.bin" for p in range(PARTITIONS)]
        self.files = [path.open("wb") for path in self.paths]

    def add(self, rows: np.ndarray, keys: np.ndarray) -> None:
        part = (keys >> _SHIFT).astype(np.int64)
        order = np.argsort(part, kind="stable")  # stable: rows keep their order per file
        rows, part = rows[order], part[order]
        bounds = np.searchsorted(part, np.arange(PARTITIONS + 1))
        for p in np.flatnonzero(np.diff(bounds)):
            self.files[p].write(rows[bounds[p] : bounds[p + 1]].tobytes())

    def parts(self) -> Iterator[np.ndarray]:
        self.close()
        for path in self.paths:
            rows = np.fromfile(path, dtype=self.dtype)
            path.unlink()
            if len(rows):
                yield rows

    def close(self) -> None:
        for f in self.files:
            if not f.closed:
                f.close()


_EXACT = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("idx", "<u8")])


class ExactIndex:
    """Records with equal digests. `add` the digests in record order; `duplicates()` once."""

    def __init__(self, folder: Path) -> None:
        self.parts = _Partitions(Path(folder) / "exact", _EXACT)
        self.n = 0

    def add(self, digests: Sequence[bytes]) -> None:
        if not digests:
            return
        words = np.frombuffer(b"".join(digests), dtype=">u8").reshape(-1, 2)
        rows = np.empty(len(digests), dtype=_EXACT)
        rows["hi"], rows["lo"] = words[:, 0], words[:, 1]
        rows["idx"] = np.arange(self.n, self.n + len(digests), dtype=np.uint64)
        self.n += len(digests)
        self.parts.add(rows, rows["hi"])

    def duplicates(self) -> tuple[np.ndarray, np.ndarray]:
        """(duplicate indices ascending, the index of the first record each one repeats)."""
        dups, firsts = [], []
        for rows in self.parts.parts():
            rows = rows[np.lexsort((rows["idx"], rows["lo"], rows["hi"]))]
            same = np.zeros(len(rows), dtype=bool)
            same[1:] = (rows["hi"][1:] == rows["hi"][:-1]) & (rows["lo"][1:] == rows["lo"][:-1])
            head = np.maximum.accumulate(np.where(same, 0, np.arange(len(rows))))
            members = np.flatnonzero(same)
            dups.append(rows["idx"][members])
            firsts.append(rows["idx"][head[members]])
        return _sorted_by_first(dups, firsts)


def _sorted_by_first(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if not a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    first, second = np.concatenate(a).astype(np.int64), np.concatenate(b).astype(np.int64)
    order = np.argsort(first, kind="stable")
    return first[order], second[order]


_BAND = np.dtype([("key", "<u8"), ("band", "<u2"), ("idx", "<u8")])


class NearIndex:
    """MinHash LSH with its buckets on disk. `add` signatures in record order (optionally
    leaving some rows out of the buckets), then `groups()` once. With `signatures` (a file of
    uint32 rows another writer filled), `index_file` bands that file's rows instead."""

    def __init__(
        self, folder: Path, threshold: float, num_perm: int = 128, signatures: Path | None = None
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.bands = lsh_bands(threshold, num_perm)
        self.need = int(np.ceil(threshold * num_perm - 1e-9))
        self.num_perm = num_perm
        self.sig_path = Path(signatures) if signatures else self.folder / "signatures.bin"
        self.sig_file = None if signatures else self.sig_path.open("wb")
        self.parts = _Partitions(self.folder / "bands", _BAND)
        self.n = 0 if self.sig_file else self.sig_path.stat().st_size // (4 * num_perm)

    def add(self, signatures: np.ndarray) -> None:
        """Append these rows (signatures of the next records, in order) and band them."""
        signatures = np.ascontiguousarray(signatures, dtype=np.uint32)
        self.sig_file.write(signatures.tobytes())
        self._band(signatures, np.arange(self.n, self.n + len(signatures), dtype=np.uint64))
        self.n += len(signatures)

    def index_file(self, skip: np.ndarray, block: int = 16384) -> None:
        """Band the rows of the `signatures` file in blocks (bounded memory), leaving out the
        rows whose index is in the sorted array `skip` (inspect: exact copies)."""
        skip = np.asarray(skip, dtype=np.uint64)
        for start in range(0, self.n, block):
            count = min(block, self.n - start)
            sigs = np.fromfile(
                self.sig_path,
                dtype=np.uint32,
                count=count * self.num_perm,
                offset=start * 4 * self.num_perm,
            ).reshape(count, self.num_perm)
            idx = np.arange(start, start + count, dtype=np.uint64)
            if len(skip):
                keep = ~np.isin(idx, skip)
                sigs, idx = sigs[keep], idx[keep]
            self._band(sigs, idx)

    def _band(self, signatures: np.ndarray, idx: np.ndarray) -> None:
        for band, (lo, hi) in enumerate(self.bands):
            rows = np.empty(len(idx), dtype=_BAND)
            rows["key"] = band_keys(signatures[:, lo:hi])
            rows["band"] = band
            rows["idx"] = idx
            self.parts.add(rows, rows["key"])

    def groups(self) -> list[list[int]]:
        """Groups of 2+ indices, each ascending, ordered by their first index."""
        if self.sig_file is not None:
            self.sig_file.close()
        verified = []
        for rows in self.parts.parts():
            first, second = _bucket_members(rows)
            verified.append(self._verify(first, second))
        self.parts.close()
        if not verified:
            return []
        pairs = np.unique(np.concatenate(verified), axis=0)
        return _components(pairs)

    def _verify(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        if not len(first):
            return np.zeros((0, 2), dtype=np.int64)
        pairs = np.unique(np.stack([first, second], axis=1), axis=0)
        keep = np.zeros(len(pairs), dtype=bool)
        with self.sig_path.open("rb") as f:
            for lo in range(0, len(pairs), _VERIFY_ROWS):
                part = pairs[lo : lo + _VERIFY_ROWS]
                rows, where = np.unique(part, return_inverse=True)
                sigs = _read_rows(f.fileno(), rows, self.num_perm)
                where = where.reshape(-1, 2)
                equal = sigs[where[:, 0]] == sigs[where[:, 1]]
                keep[lo : lo + _VERIFY_ROWS] = np.count_nonzero(equal, axis=1) >= self.need
        return pairs[keep]


def _read_rows(fd: int, rows: np.ndarray, num_perm: int) -> np.ndarray:
    """These signature rows (ascending) read with one pread each. Not a memory map: the pages
    of a mapped file count as resident while mapped, and the kernel maps the pages around each
    one touched, so a map of scattered rows grows towards the whole file (5 GB at 10M)."""
    size = 4 * num_perm
    data = b"".join(os.pread(fd, size, row * size) for row in rows.tolist())
    return np.frombuffer(data, dtype=np.uint32).reshape(len(rows), num_perm)


def _bucket_members(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) with i < j: each bucket member with the bucket's first member and with the
    member before it, a bucket being one band's equal keys (as dedup._bucket_pairs)."""
    rows = rows[np.lexsort((rows["idx"], rows["band"], rows["key"]))]
    n = len(rows)
    same = np.zeros(n, dtype=bool)
    same[1:] = (rows["key"][1:] == rows["key"][:-1]) & (rows["band"][1:] == rows["band"][:-1])
    head = np.maximum.accumulate(np.where(same, 0, np.arange(n)))
    members = np.flatnonzero(same)
    idx = rows["idx"].astype(np.int64)
    tails = idx[members]
    first = np.concatenate([idx[head[members]], idx[members - 1]])
    return first, np.concatenate([tails, tails])


def _components(pairs: np.ndarray) -> list[list[int]]:
    nodes, inverse = np.unique(pairs, return_inverse=True)
    inverse = inverse.reshape(-1, 2)
    parent = list(range(len(nodes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in inverse.tolist():
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for k, node in enumerate(nodes.tolist()):  # nodes ascending: groups come out sorted
        groups.setdefault(find(k), []).append(node)
    return list(groups.values())
