"""Read weight files without ever running code from them (design decision 3).

Files from other tools come as safetensors or as PyTorch pickles, and their names lie: the
ClassDiffusion script writes safetensors content under a `.bin` name. The format is therefore
read from the first bytes, not the extension. Pickles are opened with
`torch.load(weights_only=True)` only: a pickle that needs code (a training-config object, a
custom class) is refused with a message suggesting safetensors.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path
from typing import Any

from cdvideo.errors import InputFileError, UnsafeFileError

SAFETENSORS = "safetensors"
TORCH_ZIP = "torch-zip"  # torch.save's default format since PyTorch 1.6
TORCH_LEGACY = "torch-legacy"  # the older plain-pickle torch.save format


def container_format(path: str | os.PathLike) -> str:
    """`safetensors`, `torch-zip` or `torch-legacy`, from the file's first bytes."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"file not found: {path}")
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head.startswith(b"PK\x03\x04"):
        return TORCH_ZIP
    if head[:1] == b"\x80":  # pickle protocol marker
        return TORCH_LEGACY
    if len(head) == 9:
        # safetensors: 8-byte little-endian header length, then a JSON header starting with '{'.
        (header_len,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 0 < header_len <= path.stat().st_size - 8:
            return SAFETENSORS
    raise InputFileError(
        f"{path}: not a readable safetensors file or PyTorch checkpoint (corrupt or truncated?)"
    )


MAX_HEADER_BYTES = 100 << 20  # the safetensors library's own limit


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """(tensor name -> shape, metadata) of a safetensors file, read without loading any tensor.

    Every way the header can be damaged (not JSON, `__metadata__` not a mapping of strings, an entry
    without a shape) is one InputFileError naming the file, never a KeyError or JSONDecodeError.
    """
    path = Path(path)

    def damaged(why: str) -> InputFileError:
        return InputFileError(f"{path}: not a valid safetensors file ({why}); is it damaged or of another kind?")

    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise damaged("shorter than a header")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(MAX_HEADER_BYTES, path.stat().st_size - 8):
            raise damaged("its header length is larger than the file")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=lambda name: None)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise damaged("its header is not JSON") from None
    if not isinstance(header, dict):
        raise damaged("its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise damaged("__metadata__ is not a mapping of text to text")
    entries = {}
    for name, entry in header.items():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
            raise damaged(f"tensor {name[:60]!r} has no valid shape")
        entries[name] = tuple(shape)
    return entries, metadata


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The header metadata of a safetensors file, read without loading any tensor."""
    return read_safetensors_header(path)[1]


def safetensors_keys(path: str | os.PathLike) -> list[str]:
    return list(read_safetensors_header(path)[0])


def safe_torch_load(path: str | os.PathLike) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU; a pickle that needs code is an UnsafeFileError."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"file not found: {path}")
    # Memory-map zip checkpoints: a pickled embedding row may drag its whole 150 MB table along.
    mmap = container_format(path) == TORCH_ZIP
    if path.suffix.lower() == ".safetensors":  # torch.load would hand it to the safetensors reader
        raise InputFileError(f"{path} is a PyTorch checkpoint, not safetensors, whatever its name says: "
                             "rename it to .bin (or .pt) and pass it again")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        detail = str(error).strip().splitlines()
        culprit = next((line.strip() for line in detail if "GLOBAL" in line or "Unsupported" in line), "")
        raise UnsafeFileError(
            f"{path}: refused, this pickle needs code to load ({culprit or 'not plain tensors'}); "
            "cdvideo only reads plain tensors: get or make a .safetensors version of it"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputFileError(f"{path}: not a readable PyTorch checkpoint (corrupt or truncated?): {first}") from error


def read_weights(path: str | os.PathLike) -> tuple[Any, dict[str, str]]:
    """The contents of a weight file (a dict, possibly nested for pickles) and its safetensors metadata."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if container_format(path) == SAFETENSORS:
        try:
            return load_file(str(path)), safetensors_metadata(path)
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise InputFileError(f"{path}: not a readable safetensors file (corrupt or truncated?): {error}") from error
    return safe_torch_load(path), {}
