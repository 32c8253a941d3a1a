"""Run folders that never lose a user's work: one manifest, one set of rules for every job.

**The manifest.** A job's ``out_dir`` holds ``cac_align_run.json``::

    {"format": 1, "job": "bon", "cac_align": "0.x", "outputs": ["candidates", "chosen", ...],
     "fingerprint": {...what decides the outputs...}, "config": {...the resolved config...}}

``outputs`` are the top-level names (files or folders) the job writes; nothing else in the
folder is the job's. A folder the job writes is the job's as a whole (``checkpoints/``), unless
the output names the files in it the job writes (``evidence/[0-9][0-9][0-9][0-9][0-9].png``): then
only those are. The rules, the same for every job (:class:`RunFolder`):

1. A folder whose manifest names another job is refused, naming that job (``overwrite`` does
   not apply: one folder, one job).
2. A folder holding a run of this job with another fingerprint is refused, naming the keys that
   differ, unless ``overwrite=true``: then the old run's recorded outputs are deleted, and only
   those. A change of the trainers' layout alone (``parallel.*``: the checkpoints resume only on
   the layout that wrote them) is refused naming both layouts, the processes (the manifest's
   ``processes``) among them, and where the trained LoRA is; it never suggests ``overwrite``,
   which would delete those checkpoints (:func:`layout_change`).
3. A file or folder the job would write that exists but is not recorded as an output of a run of
   this job (a user's ``summary.md``, a ``lora/`` of their own) is refused by name, whatever
   ``overwrite`` says: move it away or choose another ``out_dir``. Anything else in the folder is
   left alone.
4. The manifest is written only once the job has validated its inputs and started
   (:meth:`RunFolder.start`, after models load): a run that failed to start leaves no record that
   would refuse the corrected command.
5. The same job with the same fingerprint continues (resumes) where its outputs allow it; how far
   is each job's own business (skip finished videos, load the last checkpoint).
6. **What may be deleted** is decided by the job, never by the record on disk: ``overwrite``
   deletes the outputs this job kind declares (and the previous manifest also lists), each
   resolved inside ``out_dir``. A name in the manifest that this job does not declare
   (``../victim``, ``..``, an absolute path) is ignored with a warning; nothing is deleted
   through a symbolic link (a link is removed, never what it points to).
7. **One run at a time.** :meth:`RunFolder.start` locks the folder (``.cac_align.lock``, an
   ``fcntl`` lock held until the run's process ends or :func:`release_locks`); a second run into
   a folder whose lock is held is refused with one line naming the other process, before it
   loads anything where possible. The operating system drops the lock of a killed process, so a
   lock left behind never blocks (the file stays, holding the last holder's description).

**Logs.** A job appends one JSON object per line to its logs (``metrics.jsonl``,
``candidates.jsonl``, ...). A kill or a full disk can leave the last line half-written;
:func:`read_jsonl_log` drops such a line with a warning, so a resume goes on instead of stopping at
a ``JSONDecodeError``. Files a job rewrites as a whole go through :func:`write_text_atomic`: a
reader sees the old or the new content, never a mix.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = [
    "EARLIER_DEFAULTS",
    "LOCK",
    "MANIFEST",
    "SERVING_KEYS",
    "RunFolder",
    "config_fingerprint",
    "differing_keys",
    "drop_serving_keys",
    "layout_change",
    "run_fingerprint",
    "keep_log_steps", "read_jsonl_log", "read_manifest", "release_locks", "share_modes", "write_text_atomic"]

MANIFEST = "cac_align_run.json"
LOCK = ".cac_align.lock"  # held (fcntl.flock) by the process running a job in the folder
_FORMAT = 1
# Fingerprint files of cac_align before the manifest: named in the message for such folders.
_LEGACY = ("config.yaml", "run_config.json", "cot_config.json", "run.json")

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# Fingerprints: what decides a run's outputs
# ---------------------------------------------------------------------------------------
# Settings added to a config after run folders of it existed, left out of the fingerprint while at
# their defaults, so that such a folder still resumes: a generator's and a regenerator's second
# guidance scale and the LoRA's experts (Wan2.2-A14B); LTX-2's guidance settings (null: the
# model's, which a Wan model does not have).
_LTX2_GUIDANCE = ("stg_scale", "modality_scale", "guidance_rescale", "audio_guidance_scale", "audio_stg_scale", "audio_modality_scale",
                  "audio_guidance_rescale", "stg_blocks")
LATER_DEFAULTS = {"generator.guidance_scale_2": None, "regenerator.guidance_scale_2": None, "lora.experts": "high",
                  "generator.decode": "vae",  # #117: the tiny Wan's latent preview as a setting; at its default, the VAE's decode as before
                  **{f"{section}.{key}": None for section in ("generator", "regenerator") for key in _LTX2_GUIDANCE},
                  # the generator trainers' parallel section (#78): at its defaults, plain data parallel as before
                  "parallel.shard": "none", "parallel.context_parallel": 1, "parallel.reshard_after_forward": True,
                  "parallel.replicate": 1,  # hybrid sharding (#98): 1, full sharding as before
                  "parallel.encoder_on_device": None,
                  # the encoders' one copy per node (#92): where weights live in host memory, never a sample
                  "parallel.share_encoders": None, "parallel.share_dir": None,
                  # parallel.timeout_s (gen/parallel/dims.py DEFAULT_TIMEOUT_S): run-only in both trainers too, so a resumed run may change it
                  "parallel.timeout_s": 1800.0,
                  # the generator trainers' settings added later (#89, #92): at their defaults, the trainers as before
                  "advantage.shuffle_scores": False, "advantage.routing": "summed", "audio": "frozen", "audio_rewards_blind_ok": False,
                  "optimizer": "adamw",
                  # the guards against reward hacking (#104): at their defaults, the trainers as before
                  "loss": "ppo_clip", "dppo_delta": None, "advantage.aggregate": "sum_then_normalize",
                  **{f"regularize.{key}": value for key, value in (("gate", "none"), ("hold", "kl"), ("judges", {}), ("fraction", 0.1), ("adapt_fraction", True),
                                                                  ("direction", "over"), ("reference", "base"), ("reset_every", 16),
                                                                  ("kl_bound", 3e-4), ("project", False), ("diversity", "none"))}}
# Sections added later whose every setting is in LATER_DEFAULTS: left out when nothing is left in them.
LATER_SECTIONS = ("parallel", "regularize")
# Settings whose default changed after run folders recorded the old one: at the new default they
# are fingerprinted as the old one, so such a folder still resumes. A model section's KV cache
# became "auto" (#71; it was "dynamic"): synth-cot's teacher is the one model section a
# fingerprint keeps it for (reward sections drop it, SERVING_KEYS below).
EARLIER_DEFAULTS = {"teacher.cache": ("auto", "dynamic")}


def config_fingerprint(config: Any, run_only_keys: Sequence[str] = ()) -> dict:
    """The config as a plain dict, less its run-only (dotted) keys: what a run folder saves and
    compares on restart (with :func:`differing_keys` for the message). A key under a section
    that is absent or null is skipped."""
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(OmegaConf.structured(config), resolve=True)
    for dotted, default in LATER_DEFAULTS.items():  # added later: at their defaults, a run folder of before them still matches
        *parents, leaf = dotted.split(".")
        node = data
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and node[leaf] == default:
            node.pop(leaf)
    for dotted, (now, before) in EARLIER_DEFAULTS.items():
        *parents, leaf = dotted.split(".")
        node = data
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(leaf) == now:
            node[leaf] = before
    for dotted in run_only_keys:
        node = data
        *parents, leaf = dotted.split(".")
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    for section in LATER_SECTIONS:  # after the run-only keys: a section left with none of its settings
        if data.get(section) == {}:
            data.pop(section)
    return data


# How a model is reached or run, not what it answers: never part of a fingerprint, wherever a
# reward section nests its models (reward.model, reward.cac.model, ...). The KV-cache mode and
# its buckets give the same answers and probabilities (greedy scoring) in either mode.
SERVING_KEYS = ("base_url", "api_key_env", "timeout_s", "max_retries", "failure_limit", "max_batch_size", "device", "cache", "batch_buckets", "length_multiple",
                "session_header", "timeout_per_mb_s", "backoff_s", "max_backoff_s", "cooldown_s", "liveness_s")


def drop_serving_keys(data: Any) -> Any:
    """``data`` without :data:`SERVING_KEYS` in any ``model`` mapping inside it (in place)."""
    if isinstance(data, dict):
        model = data.get("model")
        if isinstance(model, dict):
            for key in SERVING_KEYS:
                model.pop(key, None)
        for value in data.values():
            drop_serving_keys(value)
    elif isinstance(data, list):
        for value in data:
            drop_serving_keys(value)
    return data


def run_fingerprint(config: Any, prompts: Sequence[str], run_only_keys: Sequence[str], images: Sequence[Any] | None = None) -> dict:
    """What determines a generation run's outputs: :func:`config_fingerprint` less how the
    reward's models are reached (:data:`SERVING_KEYS`: a server's address or timeout changes no
    score), plus a hash of the prompt list itself (the same file path holding other prompts is
    another run) and, for image-to-video, of the images' contents (``images``: each prompt's
    :class:`~cac_align.run.input_files.PromptImage` or None; no key without any, so text-only
    runs keep their fingerprint)."""
    import hashlib

    data = config_fingerprint(config, run_only_keys)
    drop_serving_keys(data.get("reward"))
    data["prompts_sha256"] = hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()
    if images is not None and any(image is not None for image in images):
        data["images_sha256"] = hashlib.sha256("\n".join(image.sha256 if image else "" for image in images).encode("utf-8")).hexdigest()
    return data


# The trainers' layout (gen/parallel.py ParallelSettings): a change of it alone is named whole (layout_change)
LAYOUT_SECTION = "parallel."
_LAYOUT_SHOWN = ("shard", "replicate", "context_parallel")  # named in every layout, changed or not


def _dotted(data: Any, dotted: str) -> Any:
    """The value at ``dotted`` in nested dicts; a key left out at its later default (:data:`LATER_DEFAULTS`) reads as it."""
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return LATER_DEFAULTS.get(dotted)
        node = node[part]
    return node


def _recorded_processes(out: Path, previous: Mapping[str, Any]) -> int | None:
    """The processes a recorded run was launched on: its manifest's ``processes``, else (a folder of
    before that field) what its newest checkpoint's ``state.json`` records of a sharded layout."""
    if isinstance(previous.get("processes"), int):
        return previous["processes"]
    states = sorted((out / "checkpoints").glob("step_*/state.json")) if (out / "checkpoints").is_dir() else []
    try:
        record = json.loads(states[-1].read_text(encoding="utf-8")).get("parallel") if states else None
    except (OSError, ValueError):
        return None
    return record.get("processes") if isinstance(record, dict) and isinstance(record.get("processes"), int) else None


def layout_change(out: Path, job: str, previous: Mapping[str, Any], fingerprint: Mapping[str, Any], processes: int | None,
                  changed: Sequence[str]) -> str:
    """The refusal of a run folder whose recorded run has another layout (``parallel.*`` among the
    differing keys ``changed``): both layouts (processes, shard, replicate, context parallel, and
    each differing ``parallel.*`` key's value then and now), where that run's trained LoRA is, and
    what to do. For a layout change alone it never suggests ``overwrite=true``: that deletes the
    checkpoints, and a layout does not change what was trained."""
    before_fp = previous.get("fingerprint", {})
    layout_keys = [key for key in changed if key.startswith(LAYOUT_SECTION)]
    other = [key for key in changed if not key.startswith(LAYOUT_SECTION)]
    shown = [LAYOUT_SECTION + name for name in _LAYOUT_SHOWN] + [key for key in layout_keys if key.split(".", 1)[1] not in _LAYOUT_SHOWN]

    def say(data: Any, count: int | None) -> str:
        return ", ".join([f"{count} process{'es' if count != 1 else ''}" if count is not None else "processes not recorded",
                          *(f"{key}={_dotted(data, key)}" for key in shown)])

    was, now = _recorded_processes(out, previous), processes
    differs = [f"{key} {_dotted(before_fp, key)} -> {_dotted(fingerprint, key)}" for key in layout_keys]
    if was is not None and now is not None and was != now:
        differs.insert(0, f"processes {was} -> {now}")
    where = f"out_dir={str(out)!r}"
    found = sorted((out / "checkpoints").glob("step_*/lora")) if (out / "checkpoints").is_dir() else []
    loras = [str(path) for path in ([out / "lora"] if (out / "lora").is_dir() else []) + found[-1:]]
    folders = "a diffusers LoRA folder, which generator.lora= loads; copy it" if len(loras) == 1 else \
        "diffusers LoRA folders, which generator.lora= loads; copy one"
    kept = f"its trained LoRA is in {' and '.join(loras)} ({folders} anywhere)" if loras else "it has no checkpoint yet (no trained LoRA to keep)"
    text = (f"{where} holds {_a(job)} run of another layout: that run: {say(before_fp, was)}; this one: {say(fingerprint, now)} "
            f"(differs in: {'; '.join(differs)})")
    if other:  # more than the layout changed: replacing that run is a choice, said with what it deletes
        return (text + f", and its config differs too (in: {', '.join(other)}): choose another out_dir, or pass overwrite=true to replace "
                f"that run's outputs, which deletes its checkpoints and lora/; {kept}: copy it out first")
    return (text + ". A checkpoint resumes only on the layout that wrote it: relaunch with that run's processes and parallel settings "
            f"to continue it, or start this layout in another out_dir; {kept}. overwrite=true is not for a layout change: it would delete "
            "that run's checkpoints")


def differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts (for "config changed" errors). A section
    one side lacks (a later section left out at its defaults: ``parallel``) is named by its settings the
    other side holds (``parallel.shard``), not as a whole."""
    if isinstance(a, dict) and a and b is None:
        b = {}
    elif isinstance(b, dict) and b and a is None:
        a = {}
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += differing_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


# ---------------------------------------------------------------------------------------
# Logs and files
# ---------------------------------------------------------------------------------------
def read_jsonl_log(path: str | Path) -> list[tuple[str, dict]]:
    """The ``(line, row)`` pairs of a JSONL log, in order; blank lines are skipped and a line
    that is not JSON (torn by a kill) is dropped with a warning. A missing file gives []."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append((line, json.loads(line)))
        except json.JSONDecodeError:
            log.warning("%s: dropping a torn line left by a killed run: %.60r", path, line)
    return rows


def keep_log_steps(path: str | Path, step: int) -> None:
    """Keep the lines of a per-step JSONL log (``{"step": ...}`` rows) up to ``step``, the
    checkpoint a run resumes from: the resumed run logs the later steps again. A torn line is
    dropped with a warning (:func:`read_jsonl_log`); the file is rewritten atomically."""
    path = Path(path)
    if not path.exists():
        return
    kept = [line for line, row in read_jsonl_log(path) if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace ``path``'s content with ``text`` (written beside it, then renamed)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def share_modes(path: str | Path) -> None:
    """Give ``path`` (a file, or a folder and everything in it) the modes a plain ``open`` gives
    under the process's umask (files 0644 and folders 0755 under umask 022).

    Some writers create private files: safetensors writes weights with mode 0600, and temporary
    files (``tempfile.mkstemp``, renamed into place) are 0600. Jobs call this on what they write,
    so that a checkpoint or a video is as readable as any other file the user makes.
    """
    import os

    mask = os.umask(0)
    os.umask(mask)
    path = Path(path)
    items = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in items:
        if item.is_symlink() or not item.exists():
            continue
        item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)


def _a(job: str) -> str:
    """'a bon', 'an eval-bench': the job's name with its article."""
    return ("an " if job[:1].lower() in "aeiou" else "a ") + job


def read_manifest(out_dir: str | Path) -> dict | None:
    """The manifest of ``out_dir``, or None when it has none.

    Raises:
        RecipeError: the manifest exists but is not readable (say so, do not guess).
    """
    from cac_align.config import RecipeError

    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path} is not readable JSON ({exc}); it was not written by cac_align, or was damaged") from None
    if not isinstance(data, dict) or not isinstance(data.get("job"), str) or not isinstance(data.get("outputs"), list):
        raise RecipeError(f"{path} is not a cac_align run manifest (no 'job' and 'outputs')")
    return data


class RunFolder:
    """One job's run in ``out_dir``, by the rules of the module docstring.

    Args:
        out_dir: the folder (created by :meth:`start`).
        job: the job's name as the CLI spells it ("bon", "flow-grpo", ...).
        outputs: the top-level names the job writes (files or folders), or ``folder/<glob>`` for a
            folder in which only the files matching the glob are the job's.
        fingerprint: what decides the outputs (compared on every rerun).
        config: the resolved config, recorded for people (not compared).
        overwrite: replace a run of this job with another fingerprint.
        processes: the processes the run is launched on (a trainer's; None elsewhere), recorded in
            the manifest so that a later layout change names them.

    After construction (which checks the folder and raises ``RecipeError`` by the rules),
    :attr:`resuming` says whether a run of the same fingerprint is there to continue.
    """

    def __init__(
        self,
        out_dir: str | Path,
        job: str,
        outputs: Sequence[str],
        fingerprint: Mapping[str, Any],
        config: Mapping[str, Any] | None = None,
        *,
        overwrite: bool = False,
        processes: int | None = None,
    ):
        from cac_align.config import RecipeError

        self.path = Path(out_dir)
        self.job = job
        self.outputs = list(dict.fromkeys(outputs))
        self.names = list(dict.fromkeys(name.split("/")[0] for name in self.outputs))  # top-level names
        if MANIFEST in self.names or any(n in ("", ".", "..") for n in self.names) or any(o.count("/") > 1 for o in self.outputs):
            raise ValueError(f"outputs must be top-level names other than {MANIFEST} (or 'folder/<glob>'), got {self.outputs}")
        self.fingerprint = json.loads(json.dumps(fingerprint))  # plain JSON data, compared as saved
        self.config = config
        self.overwrite = overwrite
        self.processes = processes
        self.resuming = False
        self._replace: list[str] = []  # a previous run's outputs that start() deletes
        where = f"out_dir={str(self.path)!r}"
        _check_writable(self.path, where)
        holder = _lock_holder(self.path)  # a run at work there: nothing else is worth checking
        if holder is not None:
            raise RecipeError(f"{where} is in use by {holder}; wait for it to finish, or choose another out_dir")
        previous = read_manifest(self.path)
        if previous is not None and previous["job"] != job:
            raise RecipeError(f"{where} holds {_a(previous['job'])} run; {_a(job)} run needs a folder of its own (choose another out_dir)")
        recorded = {str(o).split("/")[0] for o in previous["outputs"]} if previous is not None else set()
        if previous is not None:
            changed = differing_keys(previous.get("fingerprint", {}), self.fingerprint)
            if changed and not overwrite:
                if any(key.startswith(LAYOUT_SECTION) for key in changed):  # the layout: named whole, the LoRA kept
                    raise RecipeError(layout_change(self.path, job, previous, self.fingerprint, processes, changed))
                raise RecipeError(
                    f"{where} holds {_a(job)} run with a different config (differs in: {', '.join(changed)}); "
                    "pass overwrite=true to replace that run's outputs, or choose another out_dir"
                )
            if overwrite:
                # the record is data from disk: only what this job declares may go (rule 6)
                listed = {str(name) for name in previous["outputs"]}
                self._replace = [name for name in self.outputs if name in listed]
                ignored = sorted(listed - set(self.outputs) - {MANIFEST})
                if ignored:
                    log.warning("%s: the old run's record lists %s, which a %s run does not write: left alone", self.path / MANIFEST, ignored, job)
            else:
                self.resuming = True
        foreign = [name for name in self.names if (self.path / name).exists() and name not in recorded]
        if foreign:
            legacy = [name for name in _LEGACY if (self.path / name).exists()] if previous is None else []
            hint = f" (it looks like a run of an older cac_align, recorded in {legacy[0]}: start a new out_dir)" if legacy else ""
            raise RecipeError(
                f"{where} already has {', '.join(foreign)}, not written by a recorded {job} run there{hint}; "
                "move it away or choose another out_dir (cac_align never overwrites files it did not create)"
            )

    def start(self) -> None:
        """Lock the folder and record the run: called once inputs are validated and models
        loaded. With ``overwrite``, the previous run's outputs that this job declares are
        deleted first (rule 6), after the lock is taken."""
        from cac_align.config import RecipeError

        self.path.mkdir(parents=True, exist_ok=True)
        holder = _acquire_lock(self.path, self.job)
        if holder is not None:
            raise RecipeError(f"out_dir={str(self.path)!r} is in use by {holder}; wait for it to finish, or choose another out_dir")
        for name in self._replace:
            _delete_output(self.path, name)
        self._replace = []
        from cac_align import __version__

        manifest = {
            "format": _FORMAT,
            "job": self.job,
            "cac_align": __version__,
            "outputs": self.outputs,
            **({"processes": self.processes} if self.processes is not None else {}),
            "fingerprint": self.fingerprint,
            "config": self.config,
        }
        write_text_atomic(self.path / MANIFEST, json.dumps(manifest, indent=1, sort_keys=False, default=str) + "\n")

    def __truediv__(self, name: str) -> Path:
        """``run / "summary.md"``: the path of one of the job's declared outputs."""
        top = Path(name).parts[0]
        if top not in self.names:
            raise ValueError(f"{self.job}: {name!r} is not among the declared outputs {self.outputs}")
        return self.path / name


# ---------------------------------------------------------------------------------------
# Deletion and locking (rules 6 and 7)
# ---------------------------------------------------------------------------------------
def _check_writable(path: Path, where: str) -> None:
    """``path`` is (or can become) a folder this process may write in."""
    import os

    from cac_align.config import RecipeError

    if path.exists() and not path.is_dir():
        raise RecipeError(f"{where} is a file, not a folder; choose another out_dir")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RecipeError(f"{where}: {existing} is a file, so no folder can be made there; choose another out_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RecipeError(f"{where}: cannot write in {existing} (permission denied); choose another out_dir")


def _delete_output(root: Path, name: str) -> None:
    """Delete one declared output of the run in ``root``: a top-level name (file or folder) or
    ``folder/<glob>``. Only paths that stay inside ``root`` go; links are removed, never followed."""
    import os

    base = os.path.realpath(root)
    top, _, pattern = name.partition("/")
    folder = root / top
    if pattern:
        if folder.is_symlink() or not folder.is_dir():
            if folder.is_symlink():
                log.warning("%s is a link: the files in it are left alone", folder)
            return
        targets = sorted(folder.glob(pattern))
    else:
        targets = [folder]
    for target in targets:
        parent = os.path.realpath(target.parent)  # the target itself may be a link: judge where it sits
        if parent != base and not parent.startswith(base + os.sep):
            log.warning("%s lies outside %s: left alone", target, root)
            continue
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
    if pattern and folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
        folder.rmdir()  # the job's folder, now empty


_HELD: dict[str, tuple[int, int]] = {}  # resolved folder -> (open lock file descriptor, holders in this process)


def _describe_holder(path: Path) -> str:
    try:
        info = json.loads((path / LOCK).read_text(encoding="utf-8"))
        return f"a {info.get('job', '?')} run (pid {info.get('pid', '?')} on {info.get('host', '?')}, started {info.get('started', '?')}: {info.get('command', '?')})"
    except (OSError, ValueError):
        return "another cac-align run (its lock file cannot be read)"


def _lock_holder(path: Path) -> str | None:
    """Who holds ``path``'s lock, or None when it is free (or held by this process)."""
    import fcntl
    import os

    key = os.path.realpath(path)
    if key in _HELD or not (path / LOCK).is_file():
        return None
    try:
        fd = os.open(path / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _describe_holder(path)
    finally:
        os.close(fd)  # closing drops the probe's shared lock
    return None


def _acquire_lock(path: Path, job: str) -> str | None:
    """Take ``path``'s lock for this process (again, if it holds it already); returns the other
    holder's description when it is taken, else None."""
    import fcntl
    import os
    import socket
    import sys
    import time

    key = os.path.realpath(path)
    if key in _HELD:
        fd, count = _HELD[key]
        _HELD[key] = (fd, count + 1)
        return None
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return _describe_holder(path)
    info = {
        "job": job,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["cac-align" if sys.argv and sys.argv[0].endswith("cac-align") else sys.executable, *sys.argv[1:]])[:300],
    }
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(info) + "\n").encode("utf-8"))
    _HELD[key] = (fd, 1)
    return None


def release_locks() -> None:
    """Release every run-folder lock this process holds (the CLI does at the end of each job; a
    process that ends releases them anyway)."""
    import os

    for fd, _ in _HELD.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()
