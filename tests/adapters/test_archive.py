"""Uploaded archives and files: real .tar/.tar.gz/.zip files, good and hostile."""

from __future__ import annotations

import io
import stat
import struct
import tarfile
import zipfile
from pathlib import Path
from typing import Literal

import pytest

from loraswap.adapters.archive import extract_upload, write_uploaded_files
from loraswap.adapters.registry import AdapterRegistry
from loraswap.adapters.store import FileSystemStore
from loraswap.adapters.validation import ValidationLimits
from loraswap.base_model.fingerprint import BaseModelFingerprint
from loraswap.core.errors import AdapterValidationError, PayloadTooLargeError
from tests.adapters.conftest import PackageBuilder, snapshot

LIMITS = ValidationLimits()


def _tar(path: Path, members: list[tuple[str, bytes]],
         mode: Literal["w:gz", "w"] = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _tar_special(path: Path, info: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w") as tar:
        tar.addfile(tarfile.TarInfo("adapter_config.json"), io.BytesIO(b""))
        tar.addfile(info)
    return path


def _zip(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members:
            bundle.writestr(name, data)
    return path


def _package_members(folder: Path, top: str = "") -> list[tuple[str, bytes]]:
    return [(f"{top}{p.name}", p.read_bytes()) for p in sorted(folder.iterdir())]


@pytest.mark.parametrize("kind", ["tar.gz", "tar", "zip-flat", "zip-folder", "tar-dot"])
def test_good_archives_register(kind: str, build_package: PackageBuilder, tmp_path: Path,
                                base_fingerprint: BaseModelFingerprint) -> None:
    package = build_package()
    archive = tmp_path / f"upload.{kind}"
    if kind == "tar.gz":
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(package, arcname="my-adapter")  # folder entry + files below it
    elif kind == "tar":
        _tar(archive, _package_members(package), mode="w")
    elif kind == "tar-dot":  # what `tar -C folder -czf x.tgz .` produces
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(package, arcname=".")
    elif kind == "zip-flat":
        _zip(archive, _package_members(package))
    else:
        _zip(archive, [("pkg/", b""), *_package_members(package, "pkg/")])
    staged = extract_upload(archive, tmp_path / "staged", LIMITS)
    assert sorted(p.name for p in staged.iterdir()) == sorted(p.name for p in package.iterdir())
    registry = AdapterRegistry(FileSystemStore(tmp_path / "store"), base_fingerprint, LIMITS,
                               tmp_path / "cache")
    assert registry.register("acme", "chat", staged).version == 1


HOSTILE_TARS: list[tuple[str, list[tuple[str, bytes]], str]] = [
    ("dotdot", [("../adapter_config.json", b"{}")], "contains '..'"),
    ("dotdot inside", [("pkg/../../etc/passwd", b"x")], "contains '..'"),
    ("absolute", [("/etc/adapter_config.json", b"{}")], "absolute path"),
    ("drive", [("C:/adapter_config.json", b"{}")], "absolute path"),
    ("backslash", [("pkg\\adapter_config.json", b"{}")], "not allowed"),
    ("nested", [("a/b/adapter_config.json", b"{}")], "nested folder"),
    ("two tops", [("a/adapter_config.json", b"{}"), ("b/loraswap.json", b"{}")],
     "more than one top-level folder"),
    ("mixed", [("adapter_config.json", b"{}"), ("a/loraswap.json", b"{}")], "mixes files"),
    ("duplicate", [("adapter_config.json", b"{}"), ("adapter_config.json", b"{}")], "twice"),
    ("stripped duplicate", [("p/adapter_config.json", b"{}"), ("p//adapter_config.json",
                                                                b"{}")], "twice"),
    ("odd name", [("adapter config.json", b"{}")], "not a plain file"),
]


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize(("case", "members", "match"), HOSTILE_TARS,
                         ids=[c[0] for c in HOSTILE_TARS])
def test_hostile_member_names_are_refused(case: str, members: list[tuple[str, bytes]],
                                          match: str, tmp_path: Path) -> None:
    for archive in (_tar(tmp_path / "x.tar.gz", members), _zip(tmp_path / "x.zip", members)):
        dest = tmp_path / f"dest-{archive.suffix}"
        with pytest.raises(AdapterValidationError, match=match):
            extract_upload(archive, dest, LIMITS)
        assert list(dest.iterdir()) == []  # nothing left behind
    assert not (tmp_path.parent / "adapter_config.json").exists()


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "chardev", "fifo"])
def test_tar_links_and_devices_are_refused(kind: str, tmp_path: Path) -> None:
    info = tarfile.TarInfo("profile.json")
    info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                 "chardev": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}[kind]
    info.linkname = "/etc/passwd" if kind != "hardlink" else "adapter_config.json"
    archive = _tar_special(tmp_path / "x.tar", info)
    with pytest.raises(AdapterValidationError, match=r"'profile\.json' is a"):
        extract_upload(archive, tmp_path / "dest", LIMITS)
    assert not (tmp_path / "dest" / "profile.json").exists()


def test_zip_symlink_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "x.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        info = zipfile.ZipInfo("profile.json")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        bundle.writestr(info, "/etc/passwd")
    with pytest.raises(AdapterValidationError, match=r"'profile\.json' is a link"):
        extract_upload(archive, tmp_path / "dest", LIMITS)


def test_zip_bomb_is_refused_by_declared_size(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "bomb.zip", [("adapter_model.safetensors", bytes(50 * 2**20))])
    assert archive.stat().st_size < 100_000  # 50 MiB of zeros compress to ~50 KiB
    with pytest.raises(PayloadTooLargeError, match="over the limit of 1048576 bytes per file"):
        extract_upload(archive, tmp_path / "dest", ValidationLimits(max_file_bytes=2**20))
    assert list((tmp_path / "dest").iterdir()) == []


def test_zip_lying_about_its_size_is_stopped(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "liar.zip", [("adapter_model.safetensors", bytes(4 * 2**20))])
    data = bytearray(archive.read_bytes())
    # Patch the uncompressed size in the local header (offset 22) and central directory
    # (offset 24) to 100 bytes: the real content is 4 MiB.
    data[22:26] = struct.pack("<I", 100)
    central = data.rfind(b"PK\x01\x02")
    data[central + 24:central + 28] = struct.pack("<I", 100)
    archive.write_bytes(bytes(data))
    with pytest.raises(AdapterValidationError):
        extract_upload(archive, tmp_path / "dest", ValidationLimits(max_file_bytes=2**20))
    assert list((tmp_path / "dest").iterdir()) == []


def test_gzip_bomb_total_is_refused(tmp_path: Path) -> None:
    members = [(name, bytes(3 * 2**20)) for name in
               ("adapter_config.json", "adapter_model.safetensors", "profile.json")]
    archive = _tar(tmp_path / "bomb.tar.gz", members)
    with pytest.raises(PayloadTooLargeError, match="upload is over the limit of 8388608"):
        extract_upload(archive, tmp_path / "dest", ValidationLimits(max_upload_bytes=8 * 2**20))


def test_too_many_files_and_oversized_archive(tmp_path: Path) -> None:
    members = [(f"f{i}.json", b"{}") for i in range(5)]
    with pytest.raises(PayloadTooLargeError, match="more than 4 files"):
        extract_upload(_tar(tmp_path / "many.tgz", members), tmp_path / "d1",
                       ValidationLimits(max_files=4))
    big = _tar(tmp_path / "big.tar", [("adapter_config.json", bytes(5000))], mode="w")
    with pytest.raises(PayloadTooLargeError, match=r"upload is \d+ bytes, over the limit"):
        extract_upload(big, tmp_path / "d2", ValidationLimits(max_upload_bytes=4096))


def test_not_an_archive(tmp_path: Path) -> None:
    junk = tmp_path / "x.tar.gz"
    junk.write_bytes(b"this is not an archive at all" * 100)
    with pytest.raises(AdapterValidationError, match=r"not a \.tar, \.tar\.gz or \.zip"):
        extract_upload(junk, tmp_path / "dest", LIMITS)
    truncated = tmp_path / "t.tar.gz"
    truncated.write_bytes(_tar(tmp_path / "ok.tar.gz",
                               [("adapter_config.json", bytes(10_000))]).read_bytes()[:60])
    with pytest.raises(AdapterValidationError, match="not a readable tar"):
        extract_upload(truncated, tmp_path / "dest2", LIMITS)


def test_uploaded_files_register(build_package: PackageBuilder, tmp_path: Path,
                                 base_fingerprint: BaseModelFingerprint) -> None:
    package = build_package()
    files = [(p.name, io.BytesIO(p.read_bytes())) for p in sorted(package.iterdir())]
    staged = write_uploaded_files(files, tmp_path / "staged", LIMITS)  # type: ignore[arg-type]
    registry = AdapterRegistry(FileSystemStore(tmp_path / "store"), base_fingerprint, LIMITS,
                               tmp_path / "cache")
    before = snapshot(registry.store)
    assert registry.register("acme", "chat", staged).version == 1
    assert snapshot(registry.store) != before


@pytest.mark.parametrize(("name", "match"), [
    ("../adapter_config.json", "not a package file"),
    ("sub/adapter_config.json", "not a package file"),
    ("/etc/passwd", "not a package file"),
    ("README.md", "not a package file"),
    ("adapter_model.bin", "not a package file"),
    ("", "not a package file"),
])
def test_uploaded_file_names_must_be_package_files(name: str, match: str,
                                                   tmp_path: Path) -> None:
    with pytest.raises(AdapterValidationError, match=match):
        write_uploaded_files([(name, io.BytesIO(b"{}"))], tmp_path / "dest", LIMITS)
    assert list((tmp_path / "dest").iterdir()) == []


def test_uploaded_files_are_limited_while_streaming(tmp_path: Path) -> None:
    with pytest.raises(AdapterValidationError, match="twice"):
        write_uploaded_files([("profile.json", io.BytesIO(b"{}")),
                              ("profile.json", io.BytesIO(b"{}"))], tmp_path / "d1", LIMITS)
    with pytest.raises(PayloadTooLargeError, match="over the limit of 1000 bytes per file"):
        write_uploaded_files([("adapter_model.safetensors", io.BytesIO(bytes(5000)))],
                             tmp_path / "d2", ValidationLimits(max_file_bytes=1000))
    assert list((tmp_path / "d2").iterdir()) == []
    with pytest.raises(AdapterValidationError, match="no files uploaded"):
        write_uploaded_files([], tmp_path / "d3", LIMITS)
