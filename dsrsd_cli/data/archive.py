"""Raw inputs read in place: a folder, a .zip, or a .tar/.tar.gz, behind one small interface.

EdNet ships ~784K per-user CSVs inside archives; extracting them would cost more disk
and time than parsing them, so members are read straight from the archive. Member
names that could escape a folder (absolute paths, `..`, links, devices) are refused:
they are listed in `RawSource.refused` and never read.

    RawSource      one listing of the source; members read whole, in bulk or streamed;
                   the source's fingerprint for the manifest
    MemberReader   random access by name in a worker process: a folder's file, or a zip
                   member at its offset (no zipfile object per member, no mapping)
    zip_members    a zip's central directory: name -> (offset, compressed size, method, crc)

A zip is listed by reading its central directory directly: zipfile builds a ZipInfo per
member, slow and heavy for EdNet's 784K members, and the parser needs only where each
member's bytes are. Those coordinates are kept in one (N, 4) int64 array beside the sorted
names (`RawSource.coords`), not as a dict of tuples: Python ints and tuples cost ~250 bytes
a member, a quarter of what listing the full KT1 held in the main process.
"""

from __future__ import annotations

import array
import bisect
import contextlib
import hashlib
import mmap
import os
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterable, Iterator

import numpy as np

from dsrsd_cli.errors import BadInput
from dsrsd_cli.io import sha256_file

_BROKEN = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError)

ZipEntry = tuple[int, int, int, int]  # local header offset, compressed size, method (-1: encrypted), crc


def _safe_name(name: str) -> bool:
    # plain string checks: this runs for each of EdNet's ~784K members
    n = name.replace("\\", "/")
    return bool(n) and not n.startswith("/") and ".." not in n.split("/") and not (len(n) > 1 and n[1] == ":")


def _unreadable(path: Path, e: BaseException) -> BadInput:
    return BadInput(f"{path}: archive is unreadable or truncated ({e}); re-download or re-create it")


@dataclass
class RawSource:
    path: Path
    kind: str                                   # "dir" | "zip" | "tar"
    names: list[str] = field(default_factory=list)     # safe member files, posix relative paths
    refused: list[str] = field(default_factory=list)   # members refused as unsafe
    coords: np.ndarray | None = None            # zip: (len(names), 4) int64, where each member's bytes are (ZipEntry)

    # ------------------------------------------------------------------ open
    @classmethod
    def open(cls, path: str | os.PathLike) -> "RawSource":
        path = Path(path).expanduser()
        if not path.exists():
            raise BadInput(f"{path}: raw data not found; pass --raw with a folder or a .zip/.tar.gz archive")
        if path.is_dir():
            names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() and not p.is_symlink())
            return cls(path=path, kind="dir", names=names)
        try:
            if zipfile.is_zipfile(path):
                listed, coords = _zip_listing(path)
                files = [i for i, name in enumerate(listed) if not name.endswith("/")]
                refused = [listed[i] for i in files if not _safe_name(listed[i])]
                order = sorted((i for i in files if _safe_name(listed[i])), key=listed.__getitem__)
                names, coords = [listed[i] for i in order], coords[np.array(order, dtype=np.int64)]
                for k in range(len(names) - 1, 0, -1):   # a name listed twice reads its last entry, as unzip leaves it
                    if names[k - 1] == names[k]:
                        coords[k - 1] = coords[k]
                return cls(path=path, kind="zip", names=names, refused=refused, coords=coords)
            if tarfile.is_tarfile(path):
                names, refused = [], []
                with tarfile.open(path, "r:*") as tf:
                    for m in tf:
                        if m.isdir():
                            continue
                        (names if m.isfile() and _safe_name(m.name) else refused).append(m.name)
                return cls(path=path, kind="tar", names=sorted(names), refused=refused)
        except _BROKEN as e:
            raise _unreadable(path, e) from None
        if path.suffix.lower() == ".zip" or path.name.lower().endswith((".tar.gz", ".tgz", ".tar")):
            raise BadInput(f"{path}: unreadable or truncated archive; re-download or re-create it")
        raise BadInput(f"{path}: not a folder, .zip or .tar(.gz) archive; pass the raw data folder or archive with --raw")

    # ------------------------------------------------------------------ read
    def where(self, index: int) -> ZipEntry | None:
        """The zip coordinates of names[index] (MemberReader.read's `where`); None for folders and tars."""
        return None if self.coords is None else tuple(int(v) for v in self.coords[index])

    def where_named(self, name: str) -> ZipEntry | None:
        """The zip coordinates of member `name`; None if not listed."""
        i = bisect.bisect_right(self.names, name) - 1
        return self.where(i) if i >= 0 and self.names[i] == name else None

    def iter_bytes(self, wanted: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        """Yield (name, content) for the wanted members: in the given order for folders and
        zips, in archive order for tars (a compressed tar can only be read front to back)."""
        wanted = list(wanted)
        try:
            if self.kind != "tar":
                reader = MemberReader(self.kind, str(self.path))
                try:
                    for name in wanted:
                        yield name, reader.read(name, self.where_named(name))
                finally:
                    reader.close()
            else:
                todo = set(wanted)
                with tarfile.open(self.path, "r:*") as tf:
                    for m in tf:
                        if m.name in todo and m.isfile() and _safe_name(m.name):
                            f = tf.extractfile(m)
                            yield m.name, f.read() if f else b""
        except _BROKEN as e:
            raise _unreadable(self.path, e) from None

    @contextlib.contextmanager
    def open_member(self, name: str) -> Iterator[tuple[BinaryIO, int]]:
        """A streaming binary handle on one member and its uncompressed size (large files
        such as OULAD's 450 MB studentVle.csv are never loaded whole)."""
        try:
            if self.kind == "dir":
                p = self.path / name
                with open(p, "rb") as f:
                    yield f, p.stat().st_size
            elif self.kind == "zip":
                with zipfile.ZipFile(self.path) as zf, zf.open(name) as f:
                    yield f, zf.getinfo(name).file_size
            else:
                with tarfile.open(self.path, "r:*") as tf:
                    m = tf.getmember(name)
                    f = tf.extractfile(m)
                    if f is None or not _safe_name(m.name):
                        raise BadInput(f"{self.path}: member {name} is not a regular file")
                    yield f, m.size
        except KeyError:
            raise BadInput(f"{self.path}: member {name} not found") from None
        except _BROKEN as e:
            raise _unreadable(self.path, e) from None

    def read_bytes(self, name: str) -> bytes:
        for _, data in self.iter_bytes([name]):
            return data
        raise BadInput(f"{self.path}: member {name} not found")

    def random_access(self, names: Iterable[str], spool: Path) -> tuple[str, str]:
        """(kind, root) of a MemberReader that reads `names` by name, in any order, from any
        process: the source itself (folder, zip), or for a tar the members copied once into
        `spool` (a compressed tar reads front to back only)."""
        if self.kind != "tar":
            return self.kind, str(self.path)
        for name, data in self.iter_bytes(names):
            target = spool / name  # only safe relative names are listed
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return "dir", str(spool)

    def find(self, basename: str) -> str | None:
        """The shallowest member called `basename` (e.g. questions.csv), if any."""
        hits = [n for n in self.names if PurePosixPath(n).name == basename]
        return min(hits, key=lambda n: (n.count("/"), n)) if hits else None

    def fingerprint(self, *, max_hashed: int = 256) -> list[dict]:
        """Source files for the manifest. An archive is hashed whole; a small folder file by
        file; a large folder (EdNet: 784K files) as one entry whose sha256 covers the sorted
        (name, size) listing -- hashing every file would cost more than parsing them."""
        if self.kind != "dir":
            return [{"path": str(self.path), "size": self.path.stat().st_size, "sha256": sha256_file(self.path)}]
        sizes = [(name, (self.path / name).stat().st_size) for name in self.names]
        if len(sizes) <= max_hashed:
            return [{"path": name, "size": size, "sha256": sha256_file(self.path / name)} for name, size in sizes]
        listing = hashlib.sha256("\n".join(f"{n}\t{s}" for n, s in sizes).encode()).hexdigest()
        return [{"path": str(self.path), "files": len(sizes), "size": sum(s for _, s in sizes), "listing_sha256": listing}]


# ---------------------------------------------------------------- members by offset
class MemberReader:
    """Reads member bytes: a file of a folder, or a zip member at its coordinates (pread:
    no mapping of the archive, whose pages would otherwise count in every worker's RSS)."""

    def __init__(self, kind: str, root: str):
        self.kind, self.root = kind, root
        self._fd: int | None = None
        self._zip: zipfile.ZipFile | None = None

    def read(self, name: str, where: ZipEntry | None) -> bytes:
        if self.kind == "dir":
            return Path(self.root, name).read_bytes()
        if where is None or where[2] not in (0, 8, -1):  # odd name encoding, bzip2, lzma...: zipfile
            self._zip = self._zip or zipfile.ZipFile(self.root)
            return self._zip.read(name)
        offset, csize, method, crc = where
        if method == -1:
            raise BadInput(f"{self.root}: member {name} is encrypted; re-create the archive without a password")
        if self._fd is None:
            self._fd = os.open(self.root, os.O_RDONLY)
        head = os.pread(self._fd, 30, offset)
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            raise BadInput(f"{self.root}: member {name} is truncated or corrupt; re-download the archive")
        nlen, elen = struct.unpack_from("<HH", head, 26)
        raw = os.pread(self._fd, csize, offset + 30 + nlen + elen)
        try:
            data = zlib.decompress(raw, -15) if method == 8 else raw
        except zlib.error as e:
            raise BadInput(f"{self.root}: member {name} is unreadable or truncated ({e}); re-download the archive") from None
        if len(raw) != csize or zlib.crc32(data) != crc:
            raise BadInput(f"{self.root}: member {name} is truncated or corrupt (CRC mismatch); re-download the archive")
        return data

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._zip is not None:
            self._zip.close()
            self._zip = None


# ---------------------------------------------------------------- the zip central directory
# central directory entry (46 bytes): signature, flags, method, crc, sizes, name/extra/comment
# lengths, local header offset (the other fields are skipped)
_ZIP_ENTRY = struct.Struct("<4s4xHH4xIII3H8xI")


def zip_members(path: Path) -> dict[str, ZipEntry]:
    """name -> (local header offset, compressed size, method, crc) from a zip's central
    directory (for a name listed twice, the last entry)."""
    names, coords = _zip_listing(path)
    return {name: tuple(row) for name, row in zip(names, coords.tolist())}


def _zip_listing(path: Path) -> tuple[list[str], np.ndarray]:
    try:
        return _read_central_directory(path)
    except (struct.error, ValueError, IndexError) as e:
        raise BadInput(f"{path}: corrupt zip central directory ({e}); re-download or re-create it") from None


def _read_central_directory(path: Path) -> tuple[list[str], np.ndarray]:
    """Every entry in directory order: the names as zipfile gives them (UTF-8 if flagged, else
    cp437; cut at a NUL byte), and their (N, 4) int64 coordinates (ZipEntry)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        end = mm.rfind(b"PK\x05\x06", max(0, len(mm) - 65_557))
        if end < 0:
            raise BadInput(f"{path}: zip end record not found (truncated archive?); re-download or re-create it")
        count, cd_size, cd_offset = struct.unpack_from("<2xH2I", mm, end + 8)
        if end >= 20 and mm[end - 20 : end - 16] == b"PK\x06\x07":  # ZIP64 end record locator
            (z64,) = struct.unpack_from("<8xQ", mm, end - 20)
            count, cd_size, cd_offset = struct.unpack_from("<32xQQQ", mm, z64)
        cd = mm[cd_offset : cd_offset + cd_size]
    names: list[str] = []
    coords = array.array("q")   # 8 bytes a value while listing, not a Python int each
    pos = 0
    for _ in range(count):
        sig, flags, method, crc, csize, usize, nlen, elen, clen, offset = _ZIP_ENTRY.unpack_from(cd, pos)
        if sig != b"PK\x01\x02":
            raise BadInput(f"{path}: corrupt zip central directory; re-download or re-create it")
        raw = cd[pos + 46 : pos + 46 + nlen]
        name = raw.decode("utf-8" if flags & 0x800 else "cp437")
        if "\x00" in name:
            name = name[: name.index("\x00")]
        if 0xFFFFFFFF in (csize, offset):  # ZIP64 sizes/offset live in extra field 0x0001
            extra, big = cd[pos + 46 + nlen : pos + 46 + nlen + elen], []
            at = 0
            while at + 4 <= len(extra):
                tag, size = struct.unpack_from("<HH", extra, at)
                if tag == 1:
                    big = list(struct.unpack_from(f"<{size // 8}Q", extra, at + 4))
                at += 4 + size
            if usize == 0xFFFFFFFF:
                big.pop(0)
            if csize == 0xFFFFFFFF:
                csize = big.pop(0)
            if offset == 0xFFFFFFFF:
                offset = big.pop(0)
        names.append(name)
        coords.extend((offset, csize, method if not flags & 1 else -1, crc))
        pos += 46 + nlen + elen + clen
    return names, np.frombuffer(coords, dtype=np.int64).reshape(-1, 4)
