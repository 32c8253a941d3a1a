"""What every family's tiny random pipeline shares (the generator side's counterpart of
:mod:`cac_align.vlm.tiny`). Each family's tiny layout (``tiny-random:wan``, ``tiny-random:ltx2``,
``tiny-random:hunyuanvideo15``, ...) is at the end of its own module in :mod:`cac_align.gen.families`
(LTX-2's in one beside it, :mod:`cac_align.gen.families.ltx2_tiny`):
diffusers' real pipeline classes at toy sizes, random weights, tokenizers built in-process. Here:

- a word-level tokenizer and a 2-layer UMT5 text encoder (Wan's, and Wan-VACE's, text side);
- how a sharded run's processes build the same tiny pipeline (below).

**In a sharded run** (``parallel.shard: fsdp2``) only the first process builds a tiny pipeline's
transformers with their weights, as only it reads a real model's (:func:`cac_align.gen.parallel.load_generator`).
Each builder draws its modules one after the other from torch's random generator, so the modules
built after a transformer (Wan's VAE, LTX-2's connectors and VAEs) depend on the draws the
transformer took. The first process records the generator's state after each transformer
(:func:`recording_transformer_draws`); the others build the transformers on the meta device and
take up the recorded state after each (:func:`transformers_on_meta`), so everything else they build
is what the first process built, and the transformers' weights reach them from it alone.
Every family's tiny builder makes its transformers through :func:`transformer_made`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

__all__ = ["recording_transformer_draws", "transformer_made", "transformers_on_meta", "umt5_text_encoder", "word_tokenizer"]

_TINY_WORDS = (
    "a the of in on with and to is are at by from video person man woman dog cat car ball cup "
    "phone hand sign street park room kitchen walking running playing holding red blue green "
    "small large slowly quickly camera scene light water tree sky"
).split()


def word_tokenizer() -> Any:
    """A whitespace word-level tokenizer with T5-style pad/eos/unk tokens, built in-process."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(_TINY_WORDS)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def umt5_text_encoder(tokenizer: Any) -> Any:
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )


# ---------------------------------------------------------------------------------------
# The transformers of a sharded run's processes (module docstring, "In a sharded run")
# ---------------------------------------------------------------------------------------
class _Draws:
    """The random generator's state after each tiny transformer built: recorded (``replay`` False)
    or replayed, the transformers then on the meta device."""

    def __init__(self, replay: list[Any] | None):
        self.replay = replay is not None
        self.states: list[Any] = list(replay or [])
        self.taken = 0


_DRAWS: _Draws | None = None


@contextlib.contextmanager
def recording_transformer_draws() -> Iterator[list[Any]]:
    """Inside: every tiny builder records torch's CPU random state after each transformer it builds,
    into the yielded list (the states a process building the same pipeline with its transformers on
    the meta device takes up: :func:`transformers_on_meta`)."""
    global _DRAWS
    draws = _Draws(None)
    previous, _DRAWS = _DRAWS, draws
    try:
        yield draws.states
    finally:
        _DRAWS = previous


@contextlib.contextmanager
def transformers_on_meta(states: list[Any]) -> Iterator[None]:
    """Inside: every tiny builder builds its transformers on the meta device (no weight drawn) and
    sets torch's CPU random state after each to ``states`` in turn (what
    :func:`recording_transformer_draws` recorded where the same pipeline was built whole), so the
    modules it builds after them are those built there."""
    global _DRAWS
    previous, _DRAWS = _DRAWS, _Draws(states)
    try:
        yield
        if _DRAWS.taken != len(_DRAWS.states):
            raise RuntimeError(f"a tiny pipeline built {_DRAWS.taken} transformer(s) on the meta device where the pipeline built whole "
                               f"recorded {len(_DRAWS.states)}: not the same pipeline")
    finally:
        _DRAWS = previous


def transformer_made(build: Callable[[], Any]) -> Any:
    """``build()``, a tiny pipeline's transformer, as the current mode says (module docstring)."""
    import torch

    draws = _DRAWS
    if draws is None:
        return build()
    if not draws.replay:
        transformer = build()
        draws.states.append(torch.get_rng_state())
        return transformer
    if draws.taken >= len(draws.states):
        raise RuntimeError(f"a tiny pipeline builds more transformers than the {len(draws.states)} recorded where it was built whole: "
                           "not the same pipeline")
    with torch.device("meta"):
        transformer = build()
    torch.set_rng_state(draws.states[draws.taken])
    draws.taken += 1
    return transformer

