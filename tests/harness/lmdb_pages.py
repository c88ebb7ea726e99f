"""Which LMDB pages a commit wrote, by database (issue 23, create38).

LMDB writes a commit as the pages it copied on write -- every page on the
path from a database's root to each leaf it changed, the free list's pages
and records, the main database's records of the named databases it changed
-- then one of the two meta pages.  A page written is a page whose bytes
differ after the commit, so :func:`page_hashes` before and after a commit
give the pages it wrote (:func:`written`), and :func:`page_owners` (a walk of
every B-tree from the newest meta page) names the database each belongs to.

Read-only, on LMDB 0.9's file format (the ``lmdb`` package's bundled
library): 16-byte page headers, 8-byte nodes, 48-byte database records.
"""

from __future__ import annotations

import hashlib
import struct
from collections import Counter
from pathlib import Path

PAGE_HEADER = 16
P_BRANCH, P_LEAF, P_OVERFLOW, P_META, P_LEAF2 = 0x01, 0x02, 0x04, 0x08, 0x20
F_BIGDATA, F_SUBDATA = 0x01, 0x02
_DB = struct.Struct("<IHHQQQQQ")  # pad, flags, depth, branch, leaf, overflow, entries, root
P_INVALID = 2**64 - 1


def _file(path: str | Path) -> Path:
    p = Path(path)
    return p / "data.mdb" if p.is_dir() else p


def page_hashes(path: str | Path, psize: int = 4096) -> list[bytes]:
    """A digest of every page of the data file (``path``: it or its directory)."""
    data = _file(path).read_bytes()
    return [hashlib.blake2b(data[i : i + psize], digest_size=12).digest() for i in range(0, len(data), psize)]


def written(before: list[bytes], after: list[bytes]) -> set[int]:
    """The page numbers whose bytes differ (or that are new) after a commit."""
    out = {i for i, h in enumerate(after) if i >= len(before) or before[i] != h}
    return out


class _Walker:
    def __init__(self, data: bytes, psize: int) -> None:
        self.data = data
        self.psize = psize
        self.owner: dict[int, str] = {}
        #: Page number -> "branch", "leaf" or "overflow".
        self.kind: dict[int, str] = {}

    def page(self, pgno: int) -> bytes:
        return self.data[pgno * self.psize : (pgno + 1) * self.psize]

    def walk(self, root: int, name: str, named: bool = False) -> None:
        """Every page of the tree at ``root`` (and, for the main database, of
        the named databases it holds) as ``name``'s."""
        stack = [root] if root != P_INVALID else []
        for _ in range(1 << 24):
            if not stack:
                return
            pgno = stack.pop()
            pg = self.page(pgno)
            flags = struct.unpack_from("<H", pg, 10)[0]
            self.owner[pgno] = name
            self.kind[pgno] = "branch" if flags & P_BRANCH else "leaf"
            if flags & P_LEAF2:
                continue
            lower = struct.unpack_from("<H", pg, 12)[0]
            n = (lower - PAGE_HEADER) >> 1
            for i in range(n):
                off = struct.unpack_from("<H", pg, PAGE_HEADER + 2 * i)[0]
                lo, hi, nflags, ksize = struct.unpack_from("<HHHH", pg, off)
                if flags & P_BRANCH:
                    stack.append(lo | hi << 16 | nflags << 32)
                    continue
                dstart = off + 8 + ksize
                if nflags & F_BIGDATA:
                    opg = struct.unpack_from("<Q", pg, dstart)[0]
                    pages = struct.unpack_from("<I", self.page(opg), 12)[0]
                    for k in range(pages):
                        self.owner[opg + k] = name
                        self.kind[opg + k] = "overflow"
                elif named and nflags & F_SUBDATA:
                    key = pg[off + 8 : dstart].decode(errors="replace")
                    root_of = _DB.unpack_from(pg, dstart)[7]
                    self.walk(root_of, key)
        raise RuntimeError("LMDB tree walk did not end")


def page_owners(path: str | Path) -> dict[int, str]:
    """Page number -> the database it belongs to (``free``: LMDB's free list;
    ``main``: the main database's pages, which hold the named databases'
    records; ``metapage``: pages 0 and 1), as of the newest meta page."""
    return _walk(path).owner


def page_kinds(path: str | Path) -> dict[int, tuple[str, str]]:
    """Page number -> (its database as :func:`page_owners` names it, its kind:
    ``branch``, ``leaf``, ``overflow`` or ``meta``)."""
    w = _walk(path)
    return {p: (db, w.kind.get(p, "meta")) for p, db in w.owner.items()}


def _walk(path: str | Path) -> _Walker:
    data = _file(path).read_bytes()
    psize = 4096
    metas = []
    for m in (0, 1):
        base = m * psize + PAGE_HEADER
        free = _DB.unpack_from(data, base + 24)
        main = _DB.unpack_from(data, base + 24 + _DB.size)
        txnid = struct.unpack_from("<Q", data, base + 24 + 2 * _DB.size + 8)[0]
        metas.append((txnid, free[7], main[7]))
    _, free_root, main_root = max(metas)
    w = _Walker(data, psize)
    w.owner[0] = w.owner[1] = "metapage"
    w.walk(free_root, "free")
    w.walk(main_root, "main", named=True)
    return w


def by_kind(pages: set[int], kinds: dict[int, tuple[str, str]]) -> Counter[tuple[str, str]]:
    """How many of ``pages`` each (database, kind) holds (``unreachable``: none)."""
    return Counter(kinds.get(p, ("unreachable", "")) for p in pages)


def by_database(pages: set[int], owners: dict[int, str]) -> Counter[str]:
    """How many of ``pages`` each database owns (``unreachable``: none now --
    written, then freed within the same commit)."""
    return Counter(owners.get(p, "unreachable") for p in pages)


def free_pages(path: str | Path) -> int:
    """Pages of the file no database holds (LMDB's free list's contents)."""
    owners = page_owners(path)
    n = _file(path).stat().st_size // 4096
    return n - len(owners)
