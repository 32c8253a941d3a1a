"""Finding a model's configs, never downloading them: a local folder, the local Hugging Face cache,
or the configs of a release shipped with cac-align (``cac_align/plan/full_size/``: config numbers
only, each with its source in its ``SOURCES.md``; :func:`shipped_configs`). Models are built from
them on the meta device (:func:`meta_module`): no weight read, no memory taken. What is not on this
machine is one line naming what to fetch (:class:`ConfigsNotFound`).
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Any, Mapping, Sequence


def model_class(library: str, class_name: str) -> Any:
    """The class a ``model_index.json`` entry ``[library, class]`` names (diffusers writes a
    pipeline-specific module's library as its pipeline folder: ``["ltx2", "LTX2TextConnectors"]``)."""
    if library in ("diffusers", "transformers"):
        return getattr(importlib.import_module(library), class_name)
    return getattr(importlib.import_module(f"diffusers.pipelines.{library}"), class_name)


def meta_module(cls: Any, folder: Path) -> Any:
    """``cls`` built from ``folder/config.json`` on the meta device (torch's device context: its
    tensors take no memory and tied weights stay tied, which accelerate's ``init_empty_weights``
    does not keep: it would count UMT5's shared embedding twice). Built once per process for a
    config file as it is (a folder of recipes naming one model builds it once); read-only."""
    config = Path(folder) / "config.json"
    return _meta_module_cached(cls, str(folder), config.stat().st_mtime_ns if config.is_file() else 0)


# Every component of every release a folder of recipes names (52 for the shipped ones), each built once per
# process: a module on the meta device holds no memory, so the cache costs nothing where 16 made them rebuild
@functools.lru_cache(maxsize=256)
def _meta_module_cached(cls: Any, folder: str, stamp: int) -> Any:
    import warnings

    with warnings.catch_warnings():  # a class's deprecation notes as it is built (weight_norm's) say nothing to a plan
        warnings.simplefilter("ignore")
        return _built_on_meta(cls, folder)


def _built_on_meta(cls: Any, folder: str) -> Any:
    import torch

    try:
        with torch.device("meta"):
            return _from_folder(cls, folder)
    except RuntimeError:
        # a module whose __init__ computes a buffer from Python numbers mixes devices under torch's meta
        # context (MMAudioVAE's mel filterbank: "Tensor on device cpu is not on the expected device meta"):
        # its parameters on the meta device, its buffers computed on the CPU (accelerate's init_empty_weights)
        from accelerate import init_empty_weights

        with init_empty_weights(include_buffers=False):
            return _from_folder(cls, folder)


def _from_folder(cls: Any, folder: str) -> Any:
    if hasattr(cls, "load_config"):  # diffusers' ModelMixin and its configs
        return cls.from_config(cls.load_config(str(folder)))
    config = cls.config_class.from_pretrained(str(folder))  # a transformers model
    return cls._from_config(config)


def _component_folder(name: str, component: str) -> Path | None:
    """The folder of ``component/config.json`` under ``name``: a local folder's subfolder, or the cached
    file of a hub id; None when it is not on this machine."""
    from cac_align.loading import looks_like_path

    if looks_like_path(name):
        path = Path(name).expanduser() / component / "config.json"
        found: Any = str(path) if path.is_file() else None
    else:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, f"{component}/config.json")
        if not isinstance(found, str) and cached_model_index(name, shipped=False) is None:  # the release's own, shipped
            shipped = shipped_configs(name)
            found = str(shipped / component / "config.json") if shipped and (shipped / component / "config.json").is_file() else None
    return Path(found).parent if isinstance(found, str) else None


def config_folders(name: str, index: Mapping[str, Any], family: Any = None) -> dict[str, Path] | None:
    """The folder of each model component's ``config.json`` (tokenizers and schedulers left out):
    ``name``'s subfolders (a local folder), or the cached files of a hub id; None when one is not on
    this machine."""
    from cac_align.gen.family import has_component

    folders: dict[str, Path] = {}
    skipped = getattr(family, "unloaded_components", ()) if family is not None else ()
    for component in index:
        if component.startswith("_") or component in skipped or not has_component(index, component) or not _is_model_entry(index[component]):
            continue
        folder = _component_folder(name, component)
        if folder is None:
            return None
        folders[component] = folder
    return folders


def _is_model_entry(entry: Sequence[Any]) -> bool:
    """Whether a ``model_index.json`` entry names a ``torch.nn.Module`` (not a tokenizer or scheduler)."""
    import torch

    try:
        return isinstance(cls := model_class(entry[0], entry[1]), type) and issubclass(cls, torch.nn.Module)
    except (ImportError, AttributeError):
        return False


class ConfigsNotFound(LookupError):
    """The configs a plan needs are not on this machine (nothing is downloaded).

    Attributes:
        needs: ``(repo or folder, files)`` for each model whose configs are missing, e.g.
            ``("Wan-AI/Wan2.2-T2V-A14B-Diffusers", "model_index.json and */config.json")``.
    """

    def __init__(self, needs: Sequence[tuple[str, str]]):
        self.needs = list(needs)
        super().__init__(self.line())

    def line(self) -> str:
        """One line: what to put in the Hugging Face cache, and the command that does it."""
        what = "; ".join(f"{files} of {repo}" for repo, files in self.needs)
        configs = [repo for repo, files in self.needs if files != ENCODER_FILES]
        encoders = [repo for repo, files in self.needs if files == ENCODER_FILES]  # an encoder judge is counted from its weights' header
        commands = [(f"hf download {repos[0]} --include '{pattern}'" if len(repos) == 1 else
                     f"for r in {' '.join(repos)}; do hf download $r --include '{pattern}'; done")
                    for repos, pattern in ((configs, "*.json"), (encoders, ENCODER_FILES)) if repos]
        fetched = "configs only" if not encoders else ("the encoders' safetensors weights" if not configs else "configs, and the encoders' safetensors weights")
        return (f"memory plan: not made, the models' configs are not on this machine; put {what} in the Hugging Face cache "
                f"(`{'; '.join(commands)}`: {fetched})")


# An encoder judge's weights: what a hint names, and the bytes of an element of each safetensors dtype
ENCODER_FILES = "*.safetensors"


# The configs of the releases the shipped recipes name, shipped with cac-align (config numbers only,
# each with its source: full_size/SOURCES.md, written by benchmarks/memory/write_full_size_configs.py):
# a plan is made offline from them where the Hugging Face cache holds none of the repository's files.
FULL_SIZE_CONFIGS = Path(__file__).resolve().parent / "full_size"


def shipped_configs(name: str) -> Path | None:
    """The folder of hub id ``name``'s configs shipped with cac-align (:data:`FULL_SIZE_CONFIGS`), or None."""
    if name.count("/") != 1:
        return None
    folder = FULL_SIZE_CONFIGS / name.replace("/", "--")
    return folder if folder.is_dir() else None


def planned_from_shipped(name: str) -> bool:
    """Whether hub id ``name``'s plan reads the configs shipped with cac-align: they are shipped and
    the local Hugging Face cache holds neither its pipeline index nor its ``config.json``."""
    from huggingface_hub import try_to_load_from_cache

    if shipped_configs(name) is None:
        return False
    try:
        cached = any(isinstance(try_to_load_from_cache(name, f), str) for f in ("model_index.json", "modular_model_index.json", "config.json"))
    except ValueError:
        return False
    return not cached


def cached_model_index(name: str, shipped: bool = True) -> dict[str, Any] | None:
    """A hub id's ``model_index.json`` from the local Hugging Face cache only (never downloaded), or
    (``shipped``) the one shipped with cac-align for a release (:func:`shipped_configs`); None when
    neither is there."""
    import json

    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, "model_index.json")
        if not isinstance(found, str):  # a modular pipeline's repository (MiniMax-H3)
            found = try_to_load_from_cache(name, "modular_model_index.json")
    except ValueError:  # not a repo id
        return None
    folder = shipped_configs(name) if shipped and not isinstance(found, str) else None
    if folder is not None:
        found = next((str(folder / f) for f in ("model_index.json", "modular_model_index.json") if (folder / f).is_file()), None)
    if not isinstance(found, str):
        return None
    index = json.loads(Path(found).read_text(encoding="utf-8"))
    return index if isinstance(index, dict) else None


def extra_folders(name: str, components: Sequence[str]) -> dict[str, Path] | None:
    """The folders of a family's ``extra_components`` (beside ``model_index.json``, not in it), as
    :func:`config_folders` finds a component's; None when one is not on this machine."""
    folders: dict[str, Path] = {}
    for component in components:
        folder = _component_folder(name, component)
        if folder is None:
            return None
        folders[component] = folder
    return folders


def judge_config_file(name: str) -> str | None:
    """The ``config.json`` of a judge named ``name``: a built-in model's or a local folder's, or the
    cached one of a hub id (never downloaded); None when not on this machine."""
    from cac_align.loading import looks_like_path
    from cac_align.models import builtin_path

    folder = builtin_path(name) or (Path(name).expanduser() if looks_like_path(name) else None)
    if folder is not None:
        path = folder / "config.json"
        return str(path) if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a repo id
        return None
    if not isinstance(found, str) and (shipped := shipped_configs(name)) is not None and (shipped / "config.json").is_file():
        found = str(shipped / "config.json")  # the release's, shipped with cac-align
    return found if isinstance(found, str) else None


def encoder_weight_files(name: str) -> list[str] | None:
    """The safetensors file(s) of an encoder judge at ``name``: the file itself (``*.safetensors``); a
    folder's ``model.safetensors``, or the shards its ``model.safetensors.index.json`` names; the same
    of a hub id from the local Hugging Face cache (never downloaded). None when they are not all on
    this machine."""
    import json

    from cac_align.loading import looks_like_path

    if not name:
        return None
    path = Path(name).expanduser()
    if name.endswith(".safetensors"):
        return [str(path)] if path.is_file() else None
    if looks_like_path(name):
        def find(file: str) -> str | None:
            return str(path / file) if (path / file).is_file() else None
    else:
        from huggingface_hub import try_to_load_from_cache

        def find(file: str) -> str | None:
            try:
                found = try_to_load_from_cache(name, file)
            except ValueError:  # not a repo id
                return None
            return found if isinstance(found, str) else None
    single = find("model.safetensors")
    if single is not None:
        return [single]
    index = find("model.safetensors.index.json")
    if index is None:
        return None
    shards = [find(shard) for shard in sorted(set(json.loads(Path(index).read_text())["weight_map"].values()))]
    return None if any(shard is None for shard in shards) else list(shards)
