"""Read MNIST's IDX files (plain or gzip) into uint8 tensors, with errors that name the file."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

# IDX magic: two zero bytes, a type code (0x08 = unsigned byte), then the number of dimensions.
_UBYTE = 0x08


class IdxFormatError(ValueError):
    """A file that should be IDX is truncated, corrupt or of the wrong kind."""


def read_idx_bytes(path: Path) -> bytes:
    """Return the decompressed content of `path` (a `.gz` suffix means gzip)."""
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if path.suffix == ".gz" else data  # in one call: faster than reading a stream
    except PermissionError as err:
        raise IdxFormatError(f"{path}: cannot read this file (permission denied). Make it readable: chmod a+r {path}") from err
    except (OSError, EOFError, zlib.error) as err:
        # gzip raises BadGzipFile (an OSError) or EOFError for a truncated archive.
        if isinstance(err, gzip.BadGzipFile) and _starts_as_idx(path):  # a browser decompressed it, kept the name
            raise IdxFormatError(f"{path}: an uncompressed IDX file under a .gz name. Rename it to {path.stem} (it is "
                                 "read as it is).") from err
        raise IdxFormatError(
            f"{path}: cannot read this file ({err}). It is corrupt or truncated: "
            "delete it and download or copy it again."
        ) from err


def _starts_as_idx(path: Path) -> bool:
    """Whether the file begins as an IDX file of bytes (MNIST's) does."""
    with open(path, "rb") as file:
        return file.read(3) == b"\x00\x00\x08"


def parse_idx(data: bytes, path: Path, expected_ndim: int) -> torch.Tensor:
    """Parse IDX `data` (read from `path`, used in messages) into a uint8 tensor of `expected_ndim` dims."""
    if data[:2] == b"\x1f\x8b" and path.suffix == ".gz":
        raise IdxFormatError(f"{path}: compressed twice (a gzip archive inside the gzip archive). Decompress it "
                             f"once: gunzip {path} && mv {path.with_suffix('')} {path}")
    if data[:2] == b"\x1f\x8b":
        raise IdxFormatError(f"{path}: a gzip archive under a plain name. Rename it to {path.name}.gz (it is read as it "
                             f"is), or decompress it: mv {path} {path}.gz && gunzip {path}.gz")
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise IdxFormatError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'}). It is not an MNIST "
                             "file, or it is damaged: download or copy it again.")
    type_code, ndim = data[2], data[3]
    if type_code != _UBYTE or ndim != expected_ndim:
        raise IdxFormatError(
            f"{path}: wrong IDX kind (type 0x{type_code:02x}, {ndim} dims); "
            f"expected unsigned bytes with {expected_ndim} dims. Is this the right file?"
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise IdxFormatError(f"{path}: truncated in the header ({len(data)} bytes).")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected_len = header_len + int(np.prod(shape))
    if len(data) != expected_len:
        what = "truncated" if len(data) < expected_len else "longer than its header says"
        raise IdxFormatError(
            f"{path}: {what}: header declares shape {shape} ({expected_len} bytes) "
            f"but the content has {len(data)} bytes. Download or copy it again."
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape)
    return torch.from_numpy(array.copy())


def read_idx(path: Path, expected_ndim: int) -> torch.Tensor:
    return parse_idx(read_idx_bytes(path), path, expected_ndim)


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array (header: magic, then one big-endian size per dimension)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _UBYTE, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write `array` as an IDX file, gzip-compressed when the name ends in .gz (like the MNIST originals)."""
    data = idx_bytes(array)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path
