"""EdNet read in place from archives: same Parquet as the folder, unsafe members refused,
truncated or corrupt archives rejected with one clear line."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dsrsd_cli.data.archive import MemberReader as _Reader, zip_members
from dsrsd_cli.data.ednet import prepare_ednet
from dsrsd_cli.errors import BadInput

FIX = Path(__file__).parent / "fixtures" / "ednet"
PARQUET = ("interactions.parquet", "questions.parquet", "lectures.parquet", "splits.parquet")


def _fixture_files(top: str = "EdNet") -> list[tuple[str, Path]]:
    """The fixtures laid out as distributed: <top>/KT1, <top>/KT4, <top>/contents/."""
    files = [(f"{top}/{p.relative_to(FIX).as_posix()}", p) for p in sorted(FIX.rglob("u*.csv"))]
    return files + [(f"{top}/contents/{name}", FIX / name) for name in ("questions.csv", "lectures.csv")]


def _zip(path: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, p in _fixture_files():
            zf.write(p, name)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def _tar(path: Path, extra: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, p in reversed(_fixture_files()):  # not sorted: the reader must not care
            tf.add(p, name)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def folder_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("folder") / "out"
    prepare_ednet(FIX, out, workers=1)
    return out


@pytest.mark.parametrize("make", [_zip, _tar], ids=["zip", "tar.gz"])
def test_archive_gives_the_folder_output(tmp_path, folder_output, make):
    archive = make(tmp_path / ("ednet.zip" if make is _zip else "ednet.tar.gz"))
    manifest = prepare_ednet(archive, tmp_path / "out", workers=1)
    for name in PARQUET:
        assert pq.read_table(tmp_path / "out" / name).equals(pq.read_table(folder_output / name)), name
    assert manifest["source"]["kind"] == ("zip" if make is _zip else "tar")
    assert manifest["source"]["files"][0]["size"] == archive.stat().st_size  # the archive is hashed whole
    assert manifest["source"]["kt_levels"] == [1, 4]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*PARQUET, "manifest.json", "arrays"])
    for file in (folder_output / "arrays").iterdir():      # the training arrays too, byte for byte
        assert (tmp_path / "out" / "arrays" / file.name).read_bytes() == file.read_bytes(), file.name


@pytest.mark.parametrize("make", [_zip, _tar], ids=["zip", "tar.gz"])
def test_escaping_member_is_refused(tmp_path, make):
    evil = b"timestamp,solving_id,question_id,user_answer,elapsed_time\n1,1,q1,a,1\n"
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    archive = make(work / ("ednet.zip" if make is _zip else "ednet.tar.gz"),
                   {"../evil.csv": evil, "KT1/../../u666.csv": evil})
    manifest = prepare_ednet(archive, work / "out", workers=1)
    assert manifest["dropped"] == {"duplicate_row": 1, "unsafe_path": 2}
    assert manifest["users"] == 9  # u666 never read
    assert [p for p in tmp_path.rglob("*evil*")] == [] and [p for p in tmp_path.rglob("u666*")] == []
    with pytest.raises(BadInput, match=r"evil\.csv.*escapes the folder"):
        prepare_ednet(archive, work / "strict", workers=1, strict=True)
    assert not (work / "strict").exists()


@pytest.mark.parametrize("make", [_zip, _tar], ids=["zip", "tar.gz"])
def test_truncated_archive(tmp_path, make):
    archive = make(tmp_path / ("ednet.zip" if make is _zip else "ednet.tar.gz"))
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInput, match=str(archive.name)):
        prepare_ednet(archive, tmp_path / "out", workers=1)
    assert not (tmp_path / "out").exists()


def test_corrupt_zip_member(tmp_path):
    archive = _zip(tmp_path / "ednet.zip")
    members = zip_members(archive)
    offset, csize, _, _ = members["EdNet/KT4/u7.csv"]
    data = bytearray(archive.read_bytes())
    data[offset + 200] ^= 0xFF  # inside the compressed bytes of the member
    archive.write_bytes(bytes(data))
    with pytest.raises(BadInput, match=r"u7\.csv is (unreadable|truncated or corrupt)"):
        prepare_ednet(archive, tmp_path / "out", workers=1)


def test_zip_members_read_like_zipfile(tmp_path):
    path = tmp_path / "mixed.zip"
    payload = {"a/stored.csv": b"x,y\n1,2\n", "a/deflated.csv": b"q,r\n" * 1000, "b/bzip2.csv": b"s\n" * 50}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a/stored.csv", payload["a/stored.csv"], zipfile.ZIP_STORED)
        zf.writestr("a/deflated.csv", payload["a/deflated.csv"], zipfile.ZIP_DEFLATED)
        zf.writestr("b/bzip2.csv", payload["b/bzip2.csv"], zipfile.ZIP_BZIP2)  # handed to zipfile
        with zf.open("c/zip64.csv", "w", force_zip64=True) as f:
            f.write(b"z\n")
    payload["c/zip64.csv"] = b"z\n"
    members = zip_members(path)
    assert sorted(members) == sorted(payload)
    reader = _Reader("zip", str(path))
    for name, data in payload.items():
        assert reader.read(name, members[name]) == data


def test_zip64_central_directory_entry(tmp_path):
    """Members past 4 GiB keep their sizes and offset in a ZIP64 extra field; a tiny
    archive written by hand in that layout reads back the same."""
    name, data = b"KT1/u1.csv", b"timestamp,solving_id,question_id,user_answer,elapsed_time\n"
    crc = zlib.crc32(data)
    local = struct.pack("<4s5H3I2H", b"PK\x03\x04", 45, 0, 0, 0, 0, crc, len(data), len(data), len(name), 0) + name + data
    extra = struct.pack("<HH3Q", 1, 24, len(data), len(data), 0)  # uncompressed, compressed size, offset
    central = struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 45, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                          len(name), len(extra), 0, 0, 0, 0, 0xFFFFFFFF) + name + extra
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local), 0)
    path = tmp_path / "zip64.zip"
    path.write_bytes(local + central + end)
    members = zip_members(path)
    assert members == {"KT1/u1.csv": (0, len(data), 0, crc)}
    assert _Reader("zip", str(path)).read("KT1/u1.csv", members["KT1/u1.csv"]) == data
    path.write_bytes(local + central[:30] + end)  # cut inside the central directory
    with pytest.raises(BadInput, match="corrupt zip central directory"):
        zip_members(path)
