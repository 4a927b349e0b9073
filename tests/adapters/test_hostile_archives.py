"""Hostile archives (issue 13, items 6 and 11): header bombs and encrypted members are
refused with a 4xx-class error before they cost memory."""

from __future__ import annotations

import gzip
import io
import tarfile
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from loraswap.adapters.archive import extract_upload
from loraswap.adapters.validation import ValidationLimits
from loraswap.core.errors import AdapterValidationError, PayloadTooLargeError

LIMITS = ValidationLimits()
HEADER_BOMB_BYTES = 64 * 2**20


def _tar_gz_with_long_header(path: Path, fmt: int) -> Path:
    """A small .tar.gz whose one member has a 64 MiB name (GNU long name or pax header)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=fmt) as tar:
        info = tarfile.TarInfo("a" * HEADER_BOMB_BYTES)
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    path.write_bytes(gzip.compress(raw.getvalue(), compresslevel=1))
    return path


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
                         ids=["gnu-longname", "pax"])
def test_tar_header_bomb_is_refused_before_it_is_read(tmp_path: Path, fmt: int) -> None:
    archive = _tar_gz_with_long_header(tmp_path / "bomb.tar.gz", fmt)
    assert archive.stat().st_size < 1 * 2**20  # the upload itself is small
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLargeError, match="header"):
            extract_upload(archive, tmp_path / "out", LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"extracting a header bomb allocated {peak} bytes"
    assert not any((tmp_path / "out").iterdir())


def test_many_small_pax_headers_share_one_budget(tmp_path: Path) -> None:
    """Headers are budgeted per archive, not per member: chained long-name headers add up."""
    block = 512
    raw = io.BytesIO()
    # 200 chained GNU long-name headers of 16 KiB each, then one small member.
    for _ in range(200):
        header = tarfile.TarInfo("././@LongLink")
        header.type = tarfile.GNUTYPE_LONGNAME
        header.size = 16 * 1024
        raw.write(header.tobuf(format=tarfile.GNU_FORMAT))
        raw.write(b"a" * header.size)
    member = tarfile.TarInfo("adapter_config.json")
    member.size = 2
    raw.write(member.tobuf(format=tarfile.GNU_FORMAT))
    raw.write(b"{}".ljust(block, b"\0"))
    raw.write(b"\0" * block * 2)
    archive = tmp_path / "chain.tar"
    archive.write_bytes(raw.getvalue())
    with pytest.raises(PayloadTooLargeError, match="header"):
        extract_upload(archive, tmp_path / "out", LIMITS)


def test_encrypted_zip_member_is_a_validation_error(tmp_path: Path) -> None:
    archive = tmp_path / "secret.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("adapter_config.json", b"{}")
    data = bytearray(archive.read_bytes())
    # Set the "encrypted" flag (bit 0) in the local and the central directory header.
    local = data.find(b"PK\x03\x04")
    central = data.find(b"PK\x01\x02")
    data[local + 6] |= 0x01
    data[central + 8] |= 0x01
    archive.write_bytes(bytes(data))
    with pytest.raises(AdapterValidationError, match="encrypted"):
        extract_upload(archive, tmp_path / "out", LIMITS)
