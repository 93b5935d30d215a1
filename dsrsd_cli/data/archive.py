"""Raw inputs read in place: a folder, a .zip, or a .tar/.tar.gz, behind one small interface.

EdNet ships ~784K per-user CSVs inside archives; extracting them would cost more disk
and time than parsing them, so members are read straight from the archive. Member
names that could escape a folder (absolute paths, `..`, links, devices) are refused:
they are listed in `RawSource.refused` and never read.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterable, Iterator

from dsrsd_cli.errors import BadInput
from dsrsd_cli.io import sha256_file

_BROKEN = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError)


def _safe_name(name: str) -> bool:
    # plain string checks: this runs for each of EdNet's ~784K members
    n = name.replace("\\", "/")
    return bool(n) and not n.startswith("/") and ".." not in n.split("/") and not (len(n) > 1 and n[1] == ":")


@dataclass
class RawSource:
    path: Path
    kind: str                                   # "dir" | "zip" | "tar"
    names: list[str] = field(default_factory=list)     # safe member files, posix relative paths
    refused: list[str] = field(default_factory=list)   # members refused as unsafe

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
                with zipfile.ZipFile(path) as zf:
                    infos = [i for i in zf.infolist() if not i.is_dir()]
                names = [i.filename for i in infos if _safe_name(i.filename)]
                refused = [i.filename for i in infos if not _safe_name(i.filename)]
                return cls(path=path, kind="zip", names=sorted(names), refused=refused)
            if tarfile.is_tarfile(path):
                names, refused = [], []
                with tarfile.open(path, "r:*") as tf:
                    for m in tf:
                        if m.isdir():
                            continue
                        (names if m.isfile() and _safe_name(m.name) else refused).append(m.name)
                return cls(path=path, kind="tar", names=sorted(names), refused=refused)
        except _BROKEN as e:
            raise BadInput(f"{path}: archive is unreadable or truncated ({e}); re-download or re-create it") from None
        if path.suffix.lower() == ".zip" or path.name.lower().endswith((".tar.gz", ".tgz", ".tar")):
            raise BadInput(f"{path}: unreadable or truncated archive; re-download or re-create it")
        raise BadInput(f"{path}: not a folder, .zip or .tar(.gz) archive; pass the raw data folder or archive with --raw")

    # ------------------------------------------------------------------ read
    def iter_bytes(self, wanted: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        """Yield (name, content) for the wanted members: in the given order for folders and
        zips, in archive order for tars (a compressed tar can only be read front to back)."""
        wanted = list(wanted)
        try:
            if self.kind == "dir":
                for name in wanted:
                    yield name, (self.path / name).read_bytes()
            elif self.kind == "zip":
                with zipfile.ZipFile(self.path) as zf:
                    for name in wanted:
                        yield name, zf.read(name)
            else:
                todo = set(wanted)
                with tarfile.open(self.path, "r:*") as tf:
                    for m in tf:
                        if m.name in todo and m.isfile() and _safe_name(m.name):
                            f = tf.extractfile(m)
                            yield m.name, f.read() if f else b""
        except _BROKEN as e:
            raise BadInput(f"{self.path}: archive is unreadable or truncated ({e}); re-download or re-create it") from None

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
            raise BadInput(f"{self.path}: archive is unreadable or truncated ({e}); re-download or re-create it") from None

    def read_bytes(self, name: str) -> bytes:
        for _, data in self.iter_bytes([name]):
            return data
        raise BadInput(f"{self.path}: member {name} not found")

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
