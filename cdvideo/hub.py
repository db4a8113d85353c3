"""The Hugging Face hub as cdvideo meets it: offline mode, whether the hub can be reached, a file
inside a local folder or the user's cache, and single weight files named `owner/repo/file.safetensors`.

Imports neither torch nor diffusers, so cdvideo.models, cdvideo.formats and cdvideo.metrics share it.
Some releases are single files inside hub repositories rather than diffusers model folders
(AnimateDiff-Lightning's `ByteDance/AnimateDiff-Lightning/animatediff_lightning_4step_diffusers.safetensors`,
AnimateLCM's spatial LoRA); they are read from a local path or the cache, downloaded only while
online (design decision 4).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cdvideo.errors import ModelNotAvailableError


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE is set, read at call time (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "on", "yes", "true"}


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick connection to the hub's host, so that no network fails in seconds, not minutes."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def local_file(source: str, relative: str) -> Path | None:
    """`relative` inside a local directory or the Hugging Face cache, or None if not there."""
    if Path(source).is_dir():
        candidate = Path(source) / relative
        return candidate if candidate.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(source, relative)
    except Exception:  # not a valid repo id: it is neither local nor in the cache
        return None
    return Path(cached) if isinstance(cached, str) else None


_HUB_FILE = re.compile(r"^([\w.-]+/[\w.-]+)/([\w./-]+\.(?:safetensors|ckpt|pth|bin))$")


def hub_file_parts(spec: str) -> tuple[str, str] | None:
    """`owner/repo/file.safetensors` -> (repo id, file name); None for anything else (local paths included)."""
    match = _HUB_FILE.match(spec)
    return None if match is None or Path(spec).exists() else (match[1], match[2])


def hub_weight_file(spec: str) -> str | None:
    """`owner/repo/file.safetensors` -> a local path (cache, or downloaded while online); None if `spec` is not one."""
    if hub_file_parts(spec) is None:
        return None
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    repo, filename = hub_file_parts(spec)
    cached = try_to_load_from_cache(repo, filename)
    if isinstance(cached, str):
        return cached
    offline = hub_offline()
    if offline or not hub_reachable():
        # "a/b/c.ckpt" is also how a mistyped local path looks: say that no such file exists here.
        raise ModelNotAvailableError(
            f"{spec} is no local file, and {filename} of hub repository {repo} is not in the Hugging Face "
            f"cache ({'HF_HUB_OFFLINE is set' if offline else 'the hub cannot be reached'}): check the path, "
            f"or download it while online with `hf download {repo} {filename}`"
        )
    try:
        return hf_hub_download(repo, filename)
    except Exception as error:  # any network or hub failure is one line
        raise ModelNotAvailableError(f"{spec} could not be downloaded ({str(error).splitlines()[0]})") from error


def check_cached(source: str, what: str, relative: str = "config.json") -> None:
    """Offline (HF_HUB_OFFLINE), a hub model that is not in the cache is one line at once, before any model
    loads. `source`: a local path (nothing to check), `owner/repo[/subfolder]` (its `relative` file must be
    cached) or `owner/repo/path/file.safetensors`."""
    if Path(source).expanduser().exists() or not hub_offline():
        return
    parts = hub_file_parts(source)
    if parts is None:
        pieces = source.split("/")
        if len(pieces) < 2:
            return  # not a hub id: whatever reads it names the problem
        repo, subfolder = "/".join(pieces[:2]), "/".join(pieces[2:])
        parts = (repo, f"{subfolder}/{relative}" if subfolder else relative)
    if local_file(*parts) is None:
        raise ModelNotAvailableError(f"{what} {source} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
                                     f"download it while online (`hf download {parts[0]}`) or give a local path")
