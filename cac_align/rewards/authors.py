"""Where a reward finds its authors' words: a file in the user's checkout of their repository.

Rewards that ask a public model as its authors do (Skyra, VideoScore2) read the prompt text from
the authors' own file at run time, never from a copy in this repository. The checkout is named by
the recipe (``authors_repo``) or by an environment variable; without either, the reward asks a
paraphrase of ours and says so once per real model.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["authors_file", "warn_paraphrase"]


def authors_file(authors_repo: str | None, env_var: str, relative: str, repository: str, key: str = "reward") -> tuple[Path, str] | None:
    """``(path of relative in the checkout, where the checkout was named)``, or None when neither
    ``authors_repo`` nor ``$env_var`` names one.

    ``where`` ("reward.authors_repo" or "the environment variable X") is for the caller's errors
    about the file's contents.

    Raises:
        RecipeError: the named folder does not exist, or holds no ``relative`` (the message names
            the key or variable to fix and ``repository``, e.g. "github.com/JoeLeelyf/Skyra").
    """
    from cac_align.config import RecipeError

    where = f"{key}.authors_repo" if authors_repo else f"the environment variable {env_var}"
    root = authors_repo or os.environ.get(env_var)
    if not root:
        return None
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise RecipeError(f"{where}={root!r}: no such folder; point it at your checkout of {repository}")
    path = folder / relative
    if not path.is_file():
        raise RecipeError(f"{where}={root!r}: no {relative} there; is it a checkout of {repository}?")
    return path, where


def warn_paraphrase(reward: str, model_name: str, env_var: str, checkout: str, key: str, warned: set[str], what: str = "prompt") -> None:
    """Warn, once per real model (``warned`` remembers), that ``reward`` asks our paraphrase of its
    authors' ``what`` instead of their words; tiny random models are not warned about."""
    from cac_align.vlm.config import TINY_PREFIX

    if model_name.startswith(TINY_PREFIX) or model_name in warned:
        return
    warned.add(model_name)
    log.warning(
        "%s %s is asked cac_align's paraphrase of its authors' %s, not their words, and may answer differently. "
        "Set %s=/path/to/your/%s checkout (or %s) to ask it as they do.",
        reward, model_name, what, env_var, checkout, f"{key}.authors_repo",
    )
