"""Shared helpers for loading weights by hub id or local path, with errors that say the fix."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

__all__ = ["WeightsNotFoundError", "check_dtype", "check_weights_source", "hub_reachable", "resolve_dtype", "resolve_device"]

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


class WeightsNotFoundError(FileNotFoundError):
    """Weights named by a recipe are neither a local directory nor a reachable hub id."""


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")  # "owner/name"


def looks_like_path(name: str) -> bool:
    """True for names that mean a local path: absolute, ./, ../, ~, an existing path, anything
    not of the hub form ``owner/name``, and ``dir/name`` whose first part is a local folder
    (``runs/cac_stage3`` when ``runs/`` exists: a missing run, not a hub repo to retry for
    minutes)."""
    return (
        os.path.isabs(name)
        or name.startswith(("./", "../", "~", ".\\"))
        or Path(name).exists()
        or ("/" in name and (not _HUB_ID.match(name) or Path(name.split("/")[0]).is_dir()))
    )


_REACHABLE: dict[str, bool] = {}  # endpoint -> whether it took a connection (asked once per process)


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached: False under ``HF_HUB_OFFLINE``, else whether
    its endpoint accepts a TCP connection within ``timeout_s`` (asked once per process)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = constants.ENDPOINT
    if endpoint not in _REACHABLE:
        url = urlparse(endpoint)
        try:
            socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout_s).close()
            _REACHABLE[endpoint] = True
        except OSError:
            _REACHABLE[endpoint] = False
    return _REACHABLE[endpoint]


def _cached_snapshot(repo_id: str) -> Path | None:
    """The local hub-cache folder of ``repo_id`` (a transformers or diffusers checkpoint), if any."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("config.json", "model_index.json", "modular_model_index.json"):  # the last: a modular pipeline's (MiniMax-H3)
        try:
            found = try_to_load_from_cache(repo_id, filename)
        except ValueError:  # not a valid repo id
            return None
        if isinstance(found, str):
            return Path(found).parent
    return None


def check_weights_source(name: str, key: str = "model") -> str:
    """Validate a recipe's weights entry before any heavy import.

    A built-in name (``cac-demo``) becomes its folder inside the package; a local path must
    exist; a hub id is passed through (from_pretrained resolves it) when the hub can be reached.
    Without the hub (no network, or ``HF_HUB_OFFLINE=1``) a hub id becomes its folder in the
    local hub cache, loaded with no network call at all, or fails at once with one line saying
    how to get the weights (instead of minutes of retries).

    Args:
        name: built-in name, hub id ("Qwen/Qwen3-VL-8B-Instruct") or local directory.
        key: the recipe key that holds it, for the error message.
    """
    from cac_align.models import builtin_path

    if not name:
        raise WeightsNotFoundError(f"recipe key '{key}' is empty; set it to a hub id or a local directory")
    builtin = builtin_path(name)
    if builtin is not None:
        if not (builtin / "config.json").is_file():
            raise WeightsNotFoundError(
                f"{key}={name!r}: the built-in model's files are missing from {builtin} (a broken install?); "
                "reinstall cac_align, or rebuild it with benchmarks/judge/reproduce_cac_demo.sh"
            )
        return str(builtin)
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise WeightsNotFoundError(
                f"{key}={name!r}: no such directory. Point '{key}' at a folder written by "
                "save_pretrained (or `hf download <repo> --local-dir <dir>`), "
                "or at a hub id such as 'Qwen/Qwen3-VL-8B-Instruct'."
            )
        return str(path)
    if not hub_reachable():
        from huggingface_hub import constants

        snapshot = _cached_snapshot(name)
        if snapshot is None:
            raise WeightsNotFoundError(
                f"{key}={name!r} is a hub id, but the hub ({constants.ENDPOINT}) cannot be reached from this machine "
                f"and the model is not in the local cache. Download it where there is network "
                f"(`hf download {name} --local-dir DIR`) and set {key}=DIR."
            )
        return str(snapshot)
    return name


def weights_error(name: str, key: str, exc: Exception) -> WeightsNotFoundError:
    """Wrap a from_pretrained failure (offline, missing files) in an actionable message: for a hub id, where
    to download it; for a local folder (it is no repository to download), what it lacks."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    if looks_like_path(name):
        return WeightsNotFoundError(
            f"could not load weights from {key}={name!r}: {exc.__class__.__name__}: {first}. The folder must hold what "
            "save_pretrained writes (config.json and model.safetensors); fill it (`hf download <repo> --local-dir "
            f"{name}`) or point {key} at another"
        )
    return WeightsNotFoundError(
        f"could not load weights from {key}={name!r}: {exc.__class__.__name__}: {first}. "
        f"If this machine is offline, download them elsewhere (`hf download {name} --local-dir DIR`) "
        f"and set {key}=DIR."
    )


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """'bf16' / 'bfloat16' / 'fp16' / 'float32' ... -> torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(_DTYPES)}") from None


def check_dtype(name: str, key: str = "dtype") -> None:
    """A dtype name a recipe may give (checked when the recipe loads, before any weight)."""
    if str(name).lower() not in _DTYPES:
        from cac_align.config import RecipeError

        raise RecipeError(f"{key}={name!r}: unknown dtype; use one of {sorted(_DTYPES)}")


def resolve_device(name: str | None, key: str = "device") -> torch.device:
    """'auto' -> cuda if available else cpu; 'cpu', 'cuda', 'cuda:N' as torch names them.

    Raises:
        RecipeError: not a device name, or a CUDA device this machine does not have; the
            message names ``key``.
    """
    from cac_align.config import RecipeError

    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise RecipeError(f"{key}={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu" and device.index not in (None, 0):
        raise RecipeError(f"{key}={name!r} is not a device; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise RecipeError(f"{key}={name!r}: this machine has no CUDA device; use auto or cpu")
        if device.index is not None and device.index >= count:
            raise RecipeError(f"{key}={name!r}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    return device
