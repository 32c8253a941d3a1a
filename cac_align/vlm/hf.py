"""In-process transformers models: loading a VLM and its processor by hub id or local path.

``load_vlm`` is the one loader every recipe uses for a vision-language model (the CaC
Qwen3-VL, UnifiedReward's Qwen2.5-VL / Qwen3-VL). Tests exercise it by saving a tiny model
(:mod:`cac_align.vlm.tiny`) to a temporary directory and loading it back, which is the same
``from_pretrained`` code path as a hub id.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

from cac_align.loading import check_weights_source, resolve_device, resolve_dtype, weights_error
from cac_align.vlm.backend import MAX_NEW_TOKENS, BackendBase

log = logging.getLogger(__name__)


def _compiler_disable(fn: Any) -> Any:
    """``torch.compiler.disable(fn)``: torch.compile leaves ``fn`` out of its graphs and calls it eagerly."""
    import torch

    return torch.compiler.disable(fn)

__all__ = ["CACHE_MODES", "DEFAULT_BATCH_BUCKETS", "HFBackend", "PAD_REQUEST", "StaticShapes", "bucket_size", "load_vlm", "processor_inputs", "render_chat", "video_metadata"]

CACHE_MODES = ("auto", "dynamic", "static")
# "auto" compiles for a call of a full batch, and never for one video: at batch 1 on an H100 the
# static step (12-14 ms) after its compile (~75 s a shape, two turns) beats the dynamic one
# (59 ms) from the second video at the paper's 1,024 tokens per turn, not on the first.
AUTO_MIN_REQUESTS = 2
# Batch sizes a static-cache batch is padded up to (capped at the backend's max_batch_size): a
# compiled decode step is specialised to its batch size, so a run compiles one graph per bucket.
DEFAULT_BATCH_BUCKETS = (1, 4, 8, 16, 32)


def _cache_argument(model: Any) -> str:
    """The name a model's forward takes its KV cache by: ``cache`` from transformers 5.24 on, where
    ``past_key_values`` still works but logs a deprecation; ``past_key_values`` before (the
    conformance venvs run 5.10-5.19 with this module)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(output: Any) -> Any:
    """A model or generate output's KV cache, under either name (see :func:`_cache_argument`);
    reading the old name on 5.24 logs the deprecation."""
    return output["cache"] if "cache" in output else output.get("past_key_values")


def bucket_size(n: int, buckets: Any) -> int:
    """The smallest bucket holding ``n`` rows (``buckets`` sorted ascending, the last >= n)."""
    for size in buckets:
        if size >= n:
            return size
    raise ValueError(f"{n} rows exceed the largest batch bucket {buckets[-1]}")


def load_vlm(
    name_or_path: str,
    *,
    dtype: str = "bfloat16",
    device: str = "auto",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    key: str = "model",
) -> tuple[Any, Any]:
    """Load an image-text-to-text model and its processor.

    Args:
        name_or_path: hub id (e.g. "Qwen/Qwen3-VL-8B-Instruct") or a local directory.
        dtype: "bfloat16", "float16" or "float32".
        device: "auto" (cuda if available), "cpu", "cuda:0", ...
        attn_implementation: e.g. "sdpa", "flash_attention_2", "eager"; None lets transformers pick.
        trust_remote_code: run code shipped with the checkpoint; off unless a recipe turns it on.
        key: the recipe key holding ``name_or_path``, named in errors.

    Returns:
        (model in eval mode on ``device``, processor)

    Raises:
        WeightsNotFoundError: the path does not exist, or the weights cannot be fetched.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    source = check_weights_source(name_or_path, key)
    target = resolve_device(device, key.rsplit(".", 1)[0] + ".device" if "." in key else "device")  # before any weight loads
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    try:
        processor = AutoProcessor.from_pretrained(source, **kwargs)
        model = AutoModelForImageTextToText.from_pretrained(
            source,
            dtype=resolve_dtype(dtype),
            attn_implementation=attn_implementation,
            use_safetensors=True,  # never unpickle weights
            **kwargs,
        )
    except (OSError, ValueError) as exc:  # missing files, offline hub, unrecognised folder
        raise weights_error(name_or_path, key, exc) from exc
    model.to(target).eval()
    return model, processor


class HFBackend(BackendBase):
    """In-process transformers backend: batched ``generate`` and teacher-forced ``choice_probs``.

    Requests are rendered with the processor's chat template; each video goes in with
    ``VideoMetadata`` built from its fps and source timestamps, and frames already sampled
    (``do_sample_frames=False``), so the prompt's ``<t seconds>`` stamps are the source times
    (a turn-2 clip cropped at 2.0 s reads "<2.1 seconds>" for its first pair of frames).
    Batches are left-padded. A lock makes one instance safe to call from a thread pool.

    **KV cache** (``cache``). ``"dynamic"``: transformers' default, a cache that grows token by
    token, run eagerly. ``"static"``: ``generate`` runs on a preallocated static cache and
    transformers compiles the decode step (on CUDA by default; ``compile_config`` decides). A
    compiled step is specialised to its shapes, so every batch is put in a **shape bucket**:
    its rows are padded up to the next size in ``batch_buckets`` with an empty request (padding
    rows are dropped from every result), its prompts are left-padded to a multiple of
    ``length_multiple`` tokens, and each call gets a cache of its own length: the padded prompt
    plus the token budget, rounded up to that multiple (a short turn does not run on a longer
    turn's cache). A run compiles a few graphs, once (torch.compile specialises the first shape
    and makes the lengths that change dynamic on the second); the first call of each (batch,
    cache length) shape is logged with its time and the graphs it compiled. Inductor's compiled
    code is cached on disk across runs (``TORCHINDUCTOR_CACHE_DIR``; ``~/.cache/cac_align/inductor``
    unless set). ``"auto"`` (the default): dynamic until a call brings at least a full batch
    (``max_batch_size`` requests, and at least :data:`AUTO_MIN_REQUESTS`) on a CUDA device,
    static from then on, every batch padded up to
    the full one unless ``batch_buckets`` says otherwise (one compiled batch size: padding a
    short batch costs less than compiling another); always dynamic on a CPU, where nothing is
    compiled. Both modes give the same answers and probabilities; only ``generate``,
    ``generate_scored`` and ``sample_token_log_probs`` change (``choice_probs`` and
    ``choice_probs_steps`` have no decode loop to compile: one prefill and a few short forward
    passes). Sampled answers (``temperature`` > 0) are correct draws in both modes, but a batch
    padded to a bucket draws other random numbers than the same batch unpadded.

    **Decode attention.** A text decoder on transformers' sdpa with grouped KV heads (Qwen3-VL-8B:
    32 query heads, 8 KV heads) gets :mod:`cac_align.vlm.grouped_decode` for its attention: a
    one-token step reads each cached K and V once instead of copying them per query head, which
    transformers 5.24's compiled static step does. Same numbers, fewer bytes per token.

    Args:
        model: an image-text-to-text model (Qwen3-VL, Qwen2.5-VL), in eval mode.
        processor: its processor.
        max_batch_size: requests per forward pass.
        generate_kwargs: extra arguments for ``model.generate`` on every call (e.g.
            ``{"min_new_tokens": 1024}`` to fix the token budget in benchmarks).
        cache: "auto", "dynamic" or "static" (above).
        batch_buckets: static mode's batch sizes (default :data:`DEFAULT_BATCH_BUCKETS`; "auto":
            ``max_batch_size`` only), capped at ``max_batch_size``, which is always a bucket.
        length_multiple: static mode's prompt and cache length granularity, in tokens.
        compile_config: a transformers ``CompileConfig`` for the decode step (static mode); None
            is transformers' default (inductor, CUDA graphs, on CUDA devices only).
        chat_template_kwargs: extra settings for the chat template on every request (e.g.
            ``{"enable_thinking": False}``).
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        max_batch_size: int = 8,
        generate_kwargs: dict | None = None,
        cache: str = "auto",
        batch_buckets: Any = None,
        length_multiple: int = 256,
        compile_config: Any = None,
        chat_template_kwargs: dict | None = None,
    ):
        import threading

        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
        from cac_align.vlm.grouped_decode import use_grouped_decode
        from cac_align.vlm.qwen_positions import install_trained_positions

        install_trained_positions(model)  # Qwen2.5-VL: text after a video placed as it was trained
        use_grouped_decode(model)  # the text decoder's one-token steps read each K/V once
        self.model = model
        self._cache_name = _cache_argument(model)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.max_batch_size = max_batch_size
        self.generate_kwargs = dict(generate_kwargs or {})
        self.cache = cache
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.static = StaticShapes(max_batch_size, batch_buckets, length_multiple, compile_config, auto=cache == "auto") if cache != "dynamic" else None
        self._recorder = _StepRecorder.of(model)
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, name_or_path: str, max_batch_size: int = 8, backend_kwargs: dict | None = None, **load_kwargs: Any) -> "HFBackend":
        """Load by hub id or path (see :func:`load_vlm` for ``load_kwargs``; ``backend_kwargs``
        go to the constructor: ``cache``, ``batch_buckets``, ...)."""
        model, processor = load_vlm(name_or_path, **load_kwargs)
        return cls(model, processor, max_batch_size=max_batch_size, **(backend_kwargs or {}))

    # -- encoding ---------------------------------------------------------------------------
    def _encode(self, requests: Any, prefixes: Any, static: "StaticShapes | None" = None) -> Any:
        """Chat template + assistant prefix per request -> left-padded model inputs.

        With ``static`` (a static-cache generation): rows padded up to the batch bucket with an
        empty request, and prompts left-padded to a multiple of the length bucket; the real rows
        come first.
        """
        requests, prefixes = list(requests), list(prefixes)
        multiple = None
        if static is not None:
            pad = static.rows(len(requests)) - len(requests)
            requests += [PAD_REQUEST] * pad
            prefixes += [""] * pad
            multiple = static.length_multiple
        texts = [render_chat(self.processor, request, **self.chat_template_kwargs) + prefix for request, prefix in zip(requests, prefixes)]
        return processor_inputs(self.processor, texts, requests, pad_to_multiple_of=multiple).to(self.model.device)

    def _static_for(self, n_requests: int) -> "StaticShapes | None":
        """The shape buckets a generation of ``n_requests`` requests runs in, or None (dynamic
        cache): see the class docstring's ``cache`` modes."""
        if self.static is not None and self.static.engaged(n_requests, self.model.device):
            return self.static
        return None

    def _generate(self, inputs: Any, max_new_tokens: int, static: "StaticShapes | None" = None, **kwargs: Any) -> Any:
        """``model.generate`` on a dynamic cache, or on a static one of this call's own length
        (``inputs`` from :meth:`_encode` with the same ``static``)."""
        if static is None:
            return self.model.generate(**inputs, max_new_tokens=max_new_tokens, **kwargs, **self.generate_kwargs)
        prompt_len = inputs["input_ids"].shape[1]
        with static.first_of_shape(inputs["input_ids"], static.cache_length(prompt_len, max_new_tokens)):
            cache = static.generate_kwargs(self.model, prompt_len, max_new_tokens)
            return self.model.generate(**inputs, max_new_tokens=max_new_tokens, **kwargs, **cache, **self.generate_kwargs)

    def _chunks(self, n: int) -> Any:
        return (range(i, min(n, i + self.max_batch_size)) for i in range(0, n, self.max_batch_size))

    def to(self, device: Any) -> "HFBackend":
        """Move the model (e.g. to the CPU while a generator has the GPU); returns self."""
        with self._lock:
            self.model.to(device)
        return self

    # -- Backend protocol -------------------------------------------------------------------
    def generate(
        self,
        requests: Any,
        max_new_tokens: int = MAX_NEW_TOKENS,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[Any]:
        import torch

        from cac_align.vlm.backend import Completion

        completions: list[Completion] = []
        with self._lock, torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            static = self._static_for(len(requests))
            for chunk in self._chunks(len(requests)):
                inputs = self._encode([requests[i] for i in chunk], [""] * len(chunk), static)
                sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
                output = self._generate(inputs, max_new_tokens, static, **sampling)
                new_tokens = output[: len(chunk), inputs["input_ids"].shape[1] :]  # padding rows dropped
                for row, read in zip(new_tokens.tolist(), _prompt_lengths(inputs, len(chunk))):
                    row = _strip_after_eos(row, self.model.generation_config.eos_token_id, self.tokenizer.pad_token_id)
                    completions.append(Completion(self.tokenizer.decode(row, skip_special_tokens=True), row, read))
        return completions

    def choice_probs(self, requests: Any, prefixes: Any, choices: Any) -> Any:
        """Probability of each full choice after each request's assistant prefix.

        Each request (with its prefix) is encoded once, video included; every choice then
        continues from that one KV cache. P(choice) is the product over the choice's tokens of
        the softmax probability of each token given everything before it (teacher-forced).
        """
        if len(prefixes) != len(requests):
            raise ValueError(f"got {len(requests)} requests but {len(prefixes)} prefixes")
        with self._lock:
            return self._unlocked_choice_probs(requests, prefixes, choices)

    def generate_scored(
        self,
        requests: Any,
        choices: Any,
        prefix_of: Any,
        max_new_tokens: int = MAX_NEW_TOKENS,
        temperature: float = 0.0,
    ) -> tuple[list[Any], Any]:
        """Generate, then score ``choices`` after ``prefix_of(answer text)`` from the generation's
        own KV cache: the request (video included) is encoded once for both.

        The prefix is located among the generated tokens (the shortest run of them that decodes
        to it). Where it ends inside a token, or ``prefix_of`` gives None, that row is scored by
        :meth:`choice_probs` (re-encoded) or left NaN. Probabilities equal :meth:`choice_probs`'s
        whenever the generated tokens are the ones the prefix text tokenizes to.
        """
        import numpy as np
        import torch
        from transformers import DynamicCache

        from cac_align.vlm.backend import Completion

        choice_ids = self._choice_ids(choices)
        completions: list[Completion] = []
        probs = np.full((len(requests), len(choices)), np.nan)
        redo: list[tuple[int, str]] = []
        with self._lock, torch.inference_mode():
            static = self._static_for(len(requests))
            for chunk in self._chunks(len(requests)):
                inputs = self._encode([requests[i] for i in chunk], [""] * len(chunk), static)
                sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
                # The choices' first-token log-probs at every step, read from the raw logits as the
                # output layer makes them (before any logits processor): (B, C) per step, instead
                # of generate's output_logits, which keeps a (B, vocabulary) float32 copy per step.
                with self._recorder.recording(choice_ids) as steps:
                    output = self._generate(inputs, max_new_tokens, static, **sampling, return_dict_in_generate=True)
                prompt_len = inputs["input_ids"].shape[1]
                generated = output.sequences[:, prompt_len:]
                if len(steps) < generated.shape[1]:  # a compiled step that did not run the recorder
                    raise RuntimeError(
                        f"the status reader saw {len(steps)} of {generated.shape[1]} generated steps: the model's forward "
                        "was compiled before this backend was built; build the HFBackend before any compiled generate"
                    )
                cache = _cache_of(output)
                cache_len = int(cache.get_seq_length()) if cache is not None else -1  # no cache: every row re-encoded
                rows, ends, firsts = [], [], []
                lengths = _prompt_lengths(inputs, len(chunk))
                for r, i in enumerate(chunk):
                    ids = _strip_after_eos(generated[r].tolist(), self.model.generation_config.eos_token_id, self.tokenizer.pad_token_id)
                    completion = Completion(self.tokenizer.decode(ids, skip_special_tokens=True), ids, lengths[r])
                    completions.append(completion)
                    prefix = prefix_of(completion.text)
                    if prefix is None:
                        continue
                    k = _tokens_spelling(self.tokenizer, ids, prefix)
                    if k is None or k >= len(steps) or prompt_len + k > cache_len:
                        redo.append((i, prefix))  # the prefix ends inside a token: re-encode this row
                        continue
                    rows.append(r)
                    ends.append(prompt_len + k)
                    firsts.append(steps[k][r])
                if rows:
                    keep = torch.tensor(rows, device=output.sequences.device)
                    if not isinstance(cache, DynamicCache):  # static: the used part of these rows, as a growable cache
                        cache = _dynamic_rows(cache, keep, cache_len)
                    else:
                        cache.batch_select_indices(keep)
                    # each row attends to its prompt and the first k generated tokens only
                    positions = torch.arange(cache_len, device=keep.device)
                    prompt_mask = inputs["attention_mask"][keep]
                    mask = torch.cat([prompt_mask, torch.ones(len(rows), cache_len - prompt_len, dtype=prompt_mask.dtype, device=keep.device)], 1)
                    mask = mask * (positions[None] < torch.tensor(ends, device=keep.device)[:, None]).to(mask.dtype)
                    deltas = self._rope_deltas()
                    deltas = deltas[keep] if deltas is not None else None
                    scored = self._score_choices(cache, mask, mask.sum(-1), torch.stack(firsts), choice_ids, deltas)
                    probs[[chunk[r] for r in rows]] = scored
        if redo:
            probs[[i for i, _ in redo]] = self.choice_probs([requests[i] for i, _ in redo], [p for _, p in redo], choices)
        return completions, probs

    def image_pixel_bounds(self) -> tuple[int, int]:
        """``(min_pixels, max_pixels)`` of this model's image processor: its ``size`` (shortest and
        longest edge, in pixels), or the older ``min_pixels`` / ``max_pixels`` attributes."""
        processor = self.processor.image_processor
        size = getattr(processor, "size", None) or {}
        low = size.get("shortest_edge", getattr(processor, "min_pixels", None))
        high = size.get("longest_edge", getattr(processor, "max_pixels", None))
        if low is None or high is None:
            raise ValueError(f"cannot read the pixel bounds of {type(processor).__name__} (size={size!r})")
        return int(low), int(high)

    def sample_token_log_probs(
        self,
        requests: Any,
        token_ids: Any,
        max_new_tokens: int = MAX_NEW_TOKENS,
        temperature: float = 1.0,
        seed: int | None = None,
    ) -> tuple[list[Any], list[Any]]:
        """Sample one answer per request, and read at every generated step the log-probability of
        each of ``token_ids`` under the distribution that step was drawn from.

        Sampling uses the model's own generation settings (its ``generation_config``: top-k,
        top-p, repetition penalty, ...) at ``temperature``. The distribution is transformers'
        processed ``scores`` (``output_scores=True``): after every logits processor and warper,
        so a token that top-k or top-p removed has probability 0 there. A reward that reads a
        probability off a sampled answer (VideoScore2's soft scores) needs exactly these; they
        differ from :meth:`generate_scored`'s, which are the model's raw distribution.

        Memory: generate keeps one vocabulary-sized float32 row per step and request until the
        chunk is done (152k tokens x 4 B = 0.6 MB a step for Qwen2.5-VL).

        Returns:
            (completions, log_probs): ``log_probs[i]`` is a (steps_i, len(token_ids)) float64
            array, one row per generated token of completion ``i`` (up to and including its end
            of sequence).
        """
        import numpy as np
        import torch

        from cac_align.vlm.backend import Completion

        if not temperature > 0:
            raise ValueError(f"sample_token_log_probs samples: temperature must be > 0, got {temperature}")
        ids = [int(t) for t in token_ids]
        completions: list[Completion] = []
        log_probs: list[Any] = []
        with self._lock, torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            static = self._static_for(len(requests))
            for chunk in self._chunks(len(requests)):
                inputs = self._encode([requests[i] for i in chunk], [""] * len(chunk), static)
                output = self._generate(inputs, max_new_tokens, static, do_sample=True, temperature=temperature,
                                        output_scores=True, return_dict_in_generate=True)
                columns = torch.tensor(ids, device=output.scores[0].device)
                # (steps, rows, tokens): log-softmax of each step's processed scores at token_ids
                read = torch.stack([torch.log_softmax(s[: len(chunk)].float(), -1).index_select(1, columns) for s in output.scores])
                read = read.permute(1, 0, 2).double().cpu().numpy()
                generated = output.sequences[: len(chunk), inputs["input_ids"].shape[1] :]
                del output
                lengths = _prompt_lengths(inputs, len(chunk))
                for r, row in enumerate(generated.tolist()):
                    row = _strip_after_eos(row, self.model.generation_config.eos_token_id, self.tokenizer.pad_token_id)
                    completions.append(Completion(self.tokenizer.decode(row, skip_special_tokens=True), row, lengths[r]))
                    log_probs.append(np.ascontiguousarray(read[r, : len(row)]))
        return completions, log_probs

    def choice_probs_steps(self, requests: Any, prefixes: Any, choices: Any, steps: int, extend: Any) -> list[Any]:
        """``steps`` rounds of ``choice_probs`` in which each round's prefix grows from the last
        by what ``extend(round, row, probs_row)`` returns (UnifiedReward's probs scoring writes
        each sub-score line after reading the previous one).

        Each request (video included) is encoded once; every later round feeds only its new
        tokens through the KV cache. Where the grown text re-tokenizes the end of the old one
        (": " then "4" gives ": 4"), the changed tokens' cache entries are masked out and fed
        again, so every round sees exactly the tokens :meth:`choice_probs` would encode for its
        full prefix, and gives the same numbers. Multi-token choices, and a row whose prefix
        tokenizes differently inside the prompt, are scored round by round by
        :meth:`choice_probs` instead.

        Returns:
            One (N, C) array per round.
        """
        import numpy as np
        import torch

        choice_ids = self._choice_ids(choices)
        n = len(requests)
        texts = list(prefixes)
        rounds = [np.zeros((n, len(choices))) for _ in range(steps)]
        if max(len(ids) for ids in choice_ids) > 1:  # multi-token choices: round by round
            for j in range(steps):
                rounds[j][:] = self.choice_probs(requests, texts, choices)
                for i in range(n):
                    texts[i] += extend(j, i, rounds[j][i]) if j + 1 < steps else ""
            return rounds
        firsts = [ids[0] for ids in choice_ids]
        for chunk in self._chunks(n):
            rows = list(chunk)
            with self._lock, torch.inference_mode():
                inputs = self._encode([requests[i] for i in rows], [texts[i] for i in rows])
                result = self.model(**inputs, use_cache=True)
                cache, mask = _cache_of(result), inputs["attention_mask"]
                lengths, deltas = mask.sum(-1), self._rope_deltas()
                last = result.logits[:, -1].float()
                device = mask.device
                # per row: the prefix's tokens and the cache columns holding them; a row whose
                # prefix did not tokenize on its own as inside the prompt is re-encoded instead
                held = [self.tokenizer(texts[i], add_special_tokens=False)["input_ids"] for i in rows]
                width0 = mask.shape[1]
                cols: list[list[int] | None] = []
                for r, ids in enumerate(held):
                    tail_ids = inputs["input_ids"][r, width0 - len(ids) :].tolist() if ids else []
                    cols.append(list(range(width0 - len(ids), width0)) if tail_ids == ids else None)
                for j in range(steps):
                    probs = torch.softmax(last, dim=-1)[:, firsts].double().cpu().numpy()
                    for r, i in enumerate(rows):
                        if cols[r] is not None:
                            rounds[j][i] = probs[r]
                    redo = [r for r in range(len(rows)) if cols[r] is None]
                    if redo:  # rows off the cache: this round re-encoded
                        rounds[j][[rows[r] for r in redo]] = self._unlocked_choice_probs(
                            [requests[rows[r]] for r in redo], [texts[rows[r]] for r in redo], choices
                        )
                    if j + 1 == steps:
                        break
                    # grow each prefix; where the new text re-tokenizes the old end (": " + "4"
                    # -> ": 4"), the cache columns of the changed tokens are masked out and the
                    # tokens from there on are fed again
                    new_ids: list[list[int]] = []
                    for r, i in enumerate(rows):
                        texts[i] += extend(j, i, rounds[j][i])
                        after = self.tokenizer(texts[i], add_special_tokens=False)["input_ids"]
                        if cols[r] is None:
                            new_ids.append([])
                            continue
                        before = held[r]
                        same = 0
                        while same < min(len(before), len(after)) and before[same] == after[same]:
                            same += 1
                        for column in cols[r][same:]:
                            mask[r, column] = 0
                        lengths[r] -= len(before) - same
                        cols[r] = cols[r][:same]
                        held[r] = after
                        new_ids.append(after[same:])
                    width = max(len(ids) for ids in new_ids)
                    if width == 0:
                        continue
                    tail = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long, device=device)
                    tail_mask = torch.zeros((len(rows), width), dtype=mask.dtype, device=device)
                    for r, ids in enumerate(new_ids):
                        if ids:
                            tail[r, : len(ids)] = torch.tensor(ids, device=device)
                            tail_mask[r, : len(ids)] = 1
                            cols[r] = cols[r] + list(range(mask.shape[1], mask.shape[1] + len(ids)))  # type: ignore[operator]
                    mask = torch.cat([mask, tail_mask], 1)
                    start = lengths + (deltas.reshape(-1).to(device) if deltas is not None else 0)
                    positions = start[:, None] + torch.arange(width, device=device)[None]
                    position_ids = positions[None].expand(3, -1, -1) if deltas is not None else positions
                    logits = self.model(input_ids=tail, attention_mask=mask, position_ids=position_ids, use_cache=True, **{self._cache_name: cache}).logits
                    counts = tail_mask.sum(-1)
                    for r in range(len(rows)):
                        if counts[r] > 0:
                            last[r] = logits[r, counts[r] - 1].float()
                    lengths = lengths + counts
        return rounds

    def _unlocked_choice_probs(self, requests: Any, prefixes: Any, choices: Any) -> Any:
        """:meth:`choice_probs` for a caller that already holds the lock."""
        import numpy as np
        import torch

        choice_ids = self._choice_ids(choices)
        out = np.zeros((len(requests), len(choices)), dtype=np.float64)
        with torch.inference_mode():
            for chunk in self._chunks(len(requests)):
                inputs = self._encode([requests[i] for i in chunk], [prefixes[i] for i in chunk])
                result = self.model(**inputs, use_cache=True)
                mask = inputs["attention_mask"]
                first = _first_token_log_probs(result.logits[:, -1], choice_ids)
                out[list(chunk)] = self._score_choices(_cache_of(result), mask, mask.sum(-1), first, choice_ids)
        return out

    # -- choice scoring from a KV cache ---------------------------------------------------
    def _choice_ids(self, choices: Any) -> list[list[int]]:
        if not choices:
            raise ValueError("choices is empty")
        ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
        if any(not i for i in ids):
            raise ValueError(f"every choice must tokenize to at least one token, got {list(choices)}")
        return ids

    def _rope_deltas(self) -> Any:
        """The multimodal-RoPE offsets (Qwen-VL) the last prefill left, per row, or None."""
        return getattr(getattr(self.model, "model", None), "rope_deltas", None)

    def _score_choices(self, cache: Any, mask: Any, lengths: Any, first_log_probs: Any, choice_ids: list[list[int]], deltas: Any = None) -> Any:
        """(B, C) probabilities of whole choices after a prefix held in ``cache``.

        ``first_log_probs`` (B, C) are the log-probabilities of the choices' first tokens right
        after the prefix (:func:`_first_token_log_probs`). Longer choices continue from the cache (repeated once
        per choice; rows choice-major within a request), attending where ``mask`` (B, cache
        length) is 1, at RoPE positions ``lengths`` (real tokens so far) + offset + ``deltas``.
        """
        import torch

        if deltas is None:
            deltas = self._rope_deltas()
        n_rows, n_choices = first_log_probs.shape[0], len(choice_ids)
        total = first_log_probs.float()  # (B, C)
        longest = max(len(ids) for ids in choice_ids)
        if longest > 1:
            device = mask.device
            cache.batch_repeat_interleave(n_choices)
            tail = torch.full((n_rows * n_choices, longest), self.tokenizer.pad_token_id, dtype=torch.long, device=device)
            tail_mask = torch.zeros_like(tail)
            for r in range(n_rows * n_choices):
                ids = choice_ids[r % n_choices]
                tail[r, : len(ids)] = torch.tensor(ids, device=device)
                tail_mask[r, : len(ids)] = 1
            full_mask = torch.cat([mask.repeat_interleave(n_choices, 0), tail_mask.to(mask.dtype)], 1)
            start = lengths.repeat_interleave(n_choices, 0).to(device)
            if deltas is not None:
                start = start + deltas.reshape(-1).to(device).repeat_interleave(n_choices, 0)
            positions = start[:, None] + torch.arange(longest, device=device)[None]
            position_ids = positions[None].expand(3, -1, -1) if deltas is not None else positions
            logits = self.model(input_ids=tail, attention_mask=full_mask, position_ids=position_ids, use_cache=True, **{self._cache_name: cache}).logits
            logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            rest = logprobs.gather(-1, tail[:, 1:, None]).squeeze(-1) * tail_mask[:, 1:]
            total = total + rest.sum(-1).view(n_rows, n_choices)
        return total.exp().cpu().numpy().astype("float64")


def _first_token_log_probs(logits: Any, choice_ids: list[list[int]], firsts: Any = None) -> Any:
    """(B, V) next-token logits -> (B, C) log-probabilities of each choice's first token
    (``firsts``: those tokens' ids as a tensor on the logits' device, if already built)."""
    import torch

    logits = logits.float()
    if firsts is None:
        firsts = torch.tensor([ids[0] for ids in choice_ids], device=logits.device)
    return logits[:, firsts] - torch.logsumexp(logits, dim=-1, keepdim=True)


class _StepRecorder:
    """A forward hook on a model's output layer, registered once per model and idle outside
    :meth:`recording`: while recording, after each forward pass it keeps the choices'
    first-token log-probs at the last position (the next token's distribution), so
    ``log_probs[k]`` (B, C) is what the model gave the k-th generated token's choices.

    It stays registered because a compiled decode step runs the hooks it was traced with: a hook
    added later would be skipped in silence. The hook is excluded from compilation
    (``torch.compiler.disable``): the compiled step breaks around it and calls it eagerly, and
    its idle/recording state is never baked into a graph.
    """

    def __init__(self) -> None:
        self.choice_ids: list[list[int]] | None = None
        self.firsts: Any = None
        self.log_probs: list[Any] = []

    @classmethod
    def of(cls, model: Any) -> "_StepRecorder":
        """The recorder of ``model``, registered on its output layer at the first call."""
        recorder = getattr(model, "_cac_align_step_recorder", None)
        if recorder is None:
            recorder = cls()
            model.get_output_embeddings().register_forward_hook(recorder)
            model._cac_align_step_recorder = recorder
        return recorder

    @contextlib.contextmanager
    def recording(self, choice_ids: list[list[int]]) -> Iterator[list[Any]]:
        """Record for the ``generate`` inside the block; yields the list of per-step log-probs.
        Idle again afterwards, also after a failure."""
        self.choice_ids, self.firsts, self.log_probs = choice_ids, None, []
        try:
            yield self.log_probs
        finally:
            self.choice_ids, self.firsts = None, None

    def __call__(self, module: Any, args: Any, output: Any) -> None:
        self._record(output)

    @_compiler_disable
    def _record(self, output: Any) -> None:
        if self.choice_ids is None:
            return
        if self.firsts is None:  # built once per call, not once per generated token
            import torch

            self.firsts = torch.tensor([ids[0] for ids in self.choice_ids], device=output.device)
        self.log_probs.append(_first_token_log_probs(output[:, -1], self.choice_ids, self.firsts))


def _dynamic_rows(cache: Any, rows: Any, length: int) -> Any:
    """A ``DynamicCache`` holding the first ``length`` positions of ``rows`` of a static cache
    (its layers' ``keys`` / ``values``), for the few extra forward passes that score longer
    choices (their rows and lengths differ from the compiled step's)."""
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=[(layer.keys[rows, :, :length], layer.values[rows, :, :length]) for layer in cache.layers])


class StaticShapes:
    """Shape buckets for generation on a static KV cache (see :class:`HFBackend`'s docstring).

    Args:
        max_batch_size: the largest batch; always a bucket.
        batch_buckets: batch sizes to pad up to, capped at ``max_batch_size``; default
            :data:`DEFAULT_BATCH_BUCKETS`, or ``max_batch_size`` alone with ``auto``.
        length_multiple: prompts are left-padded, and cache lengths rounded up, to a multiple of
            this many tokens.
        compile_config: a transformers ``CompileConfig`` for the decode step, or None for
            transformers' default (inductor with CUDA graphs, on CUDA devices only).
        auto: the ``cache: auto`` rule: :meth:`engaged` only on a CUDA device, from the first
            call that brings a full batch on.
    """

    def __init__(self, max_batch_size: int, batch_buckets: Any = None, length_multiple: int = 256, compile_config: Any = None, auto: bool = False):
        default = (max_batch_size,) if auto else DEFAULT_BATCH_BUCKETS
        buckets = sorted({int(b) for b in (batch_buckets or default)})
        if buckets[0] < 1:
            raise ValueError(f"batch_buckets must be sizes >= 1, got {batch_buckets}")
        if length_multiple < 1:
            raise ValueError(f"length_multiple must be >= 1, got {length_multiple}")
        self.buckets = tuple([b for b in buckets if b < max_batch_size] + [max_batch_size])
        self.max_batch_size = max_batch_size
        self.length_multiple = length_multiple
        self.compile_config = compile_config
        self.auto = auto
        self.on = False  # "auto" switches on at its first full batch on CUDA, "static" now
        self._seen: set[tuple[int, int]] = set()
        if not auto:
            self._switch_on()

    def _switch_on(self) -> None:
        self.on = True
        _use_persistent_inductor_cache()
        _allow_recompiles()

    def engaged(self, n_requests: int, device: Any) -> bool:
        """Whether a generation of ``n_requests`` requests on ``device`` runs on the static cache.
        Always in static mode. With ``auto``: never off CUDA (nothing is compiled there, and the
        eager static cache is slower than the dynamic one); on CUDA from the first call of at
        least ``max_batch_size`` requests (and never fewer than :data:`AUTO_MIN_REQUESTS`) on,
        for the rest of this object's life: a one-off call of a few requests does not wait
        minutes for a compile; a loop of full batches pays it once."""
        if not self.on and self.auto and getattr(device, "type", str(device)) == "cuda" and n_requests >= max(self.max_batch_size, AUTO_MIN_REQUESTS):
            self._switch_on()
            log.info("model.cache auto: a call of %d requests fills a batch of %d on %s: the static KV cache from now on "
                     "(the decode step compiles once per shape)", n_requests, self.max_batch_size, device)
        return self.on

    def rows(self, n: int) -> int:
        """The batch size ``n`` rows are padded up to."""
        return bucket_size(n, self.buckets)

    def padded_length(self, length: int) -> int:
        """``length`` rounded up to the length multiple."""
        return -(-length // self.length_multiple) * self.length_multiple

    def cache_length(self, prompt_len: int, max_new_tokens: int) -> int:
        """The static cache a generation gets: its prompt and budget, rounded up to the length
        multiple, whatever lengths came before (no turn runs on a longer turn's cache)."""
        return self.padded_length(prompt_len + max_new_tokens)

    def generate_kwargs(self, model: Any, prompt_len: int, max_new_tokens: int) -> dict[str, Any]:
        """``generate`` arguments for one generation: a fresh ``StaticCache`` of
        :meth:`cache_length` under the model's cache argument, and the compile config if set.

        The cache is passed in rather than asked for with ``cache_implementation="static"``,
        because transformers' ``_prepare_static_cache`` keeps the longest cache length a model has
        seen (``max(max_cache_len, previous)``), so a short turn after a long one would attend
        over the long one's length; a cache we size ourselves is of this call's length. A
        passed static cache still compiles the decode step (transformers'
        ``_valid_auto_compile_criteria`` asks for a compileable cache, not for who made it).
        """
        from transformers import StaticCache

        cache = StaticCache(config=model.config, max_cache_len=self.cache_length(prompt_len, max_new_tokens))
        kwargs: dict[str, Any] = {_cache_argument(model): cache}
        if self.compile_config is not None:
            kwargs["compile_config"] = self.compile_config
        return kwargs

    @contextlib.contextmanager
    def first_of_shape(self, input_ids: Any, cache_len: int) -> Iterator[None]:
        """Time the generation in the block and log it when it is the first of its (batch, cache
        length) shape in this process: that one may compile the decode step (reported once per
        shape, with the graphs torch.compile made meanwhile)."""
        import time

        import torch

        shape = (int(input_ids.shape[0]), int(cache_len))
        graphs, start = _compiled_graphs(), time.perf_counter()
        yield
        if shape in self._seen:
            return
        self._seen.add(shape)
        if input_ids.is_cuda:
            torch.cuda.synchronize()
        log.info(
            "static KV cache: the first generation of batch %d x cache %d tokens took %.1f s and compiled %d graph(s); "
            "later generations of this shape reuse them",
            shape[0], shape[1], time.perf_counter() - start, _compiled_graphs() - graphs,
        )


def _compiled_graphs() -> int:
    """Graphs torch.compile has made in this process so far (dynamo's count)."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except (ImportError, KeyError):  # pragma: no cover - a torch without dynamo counters
        return 0


RECOMPILE_LIMIT = 64  # torch.compile graphs per code object a static-cache process may make


def _allow_recompiles() -> None:
    """Raise dynamo's ``recompile_limit`` (default 8) to :data:`RECOMPILE_LIMIT` unless set higher.

    A static-cache run compiles its decode step once per shape on purpose (batch bucket, cache
    length, attention implementation, compile config), and dynamo counts the graphs per code
    object: the forward of a model class, shared by every model of that class in the process (a
    judge and a stage-3 policy of one architecture, two backends with their own compile configs).
    Past the limit dynamo runs the step eagerly without failing, which on a static cache is
    slower than the dynamic cache: a silent slowdown, not an error. The shapes are bounded by
    the buckets, so a higher limit cannot run away."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(int(torch._dynamo.config.recompile_limit), RECOMPILE_LIMIT)


def _use_persistent_inductor_cache() -> None:
    """Keep inductor's compiled code across runs: ``~/.cache/cac_align/inductor`` unless the user
    chose a place (``TORCHINDUCTOR_CACHE_DIR``); its default lives in /tmp, which reboots clear."""
    import os
    from pathlib import Path

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "cac_align" / "inductor"))


PAD_REQUEST = [{"role": "user", "content": [{"type": "text", "text": ""}]}]  # a static batch's filler row


def _tokens_spelling(tokenizer: Any, ids: list[int], text: str) -> int | None:
    """The smallest k whose first k tokens of ``ids`` decode to exactly ``text``, or None."""
    if not text:
        return 0
    for k in range(1, len(ids) + 1):
        decoded = tokenizer.decode(ids[:k], skip_special_tokens=True)
        if decoded == text:
            return k
        if len(decoded) > len(text) and not text.startswith(decoded):
            return None
    return None


def _prompt_lengths(inputs: Any, rows: int) -> list[int]:
    """The prompt tokens of each of the first ``rows`` rows of a batch (padding not counted)."""
    return [int(n) for n in inputs["attention_mask"][:rows].sum(-1).tolist()]


def _strip_after_eos(row: list[int], eos: Any, pad: int | None) -> list[int]:
    stops = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
    for position, token in enumerate(row):
        if token in stops:
            return row[: position + 1]
    return [t for t in row if t != pad] if pad is not None and pad not in stops else row


# ---------------------------------------------------------------------------------------
# Rendering chats for Qwen-VL processors (shared with the CaC training collator)
# ---------------------------------------------------------------------------------------
def render_chat(processor: Any, messages: Any, add_generation_prompt: bool = True, **template_kwargs: Any) -> str:
    """The chat template's text for ``messages`` (media replaced by the template's placeholders);
    ``template_kwargs`` are the template's own settings (``enable_thinking=False``)."""
    template_messages = [
        {"role": m["role"], "content": [{k: v for k, v in p.items() if k not in ("video", "image", "jpeg", "png")} for p in m["content"]]}
        for m in messages
    ]
    return processor.apply_chat_template(template_messages, tokenize=False, add_generation_prompt=add_generation_prompt, **template_kwargs)


def video_metadata(video: Any) -> tuple[Any, Any]:
    """(frames, VideoMetadata) for the processor: frames already sampled, source-time stamps
    (:func:`~cac_align.vlm.backend.model_frames`)."""
    from transformers.video_utils import VideoMetadata

    from cac_align.vlm.backend import model_frames

    frames, fps, indices = model_frames(video)
    return frames, VideoMetadata(total_num_frames=len(frames), fps=fps, frames_indices=indices)


def processor_inputs(processor: Any, texts: list[str], requests: list[Any], padding: bool = True, pad_to_multiple_of: int | None = None) -> Any:
    """Run the processor on rendered ``texts`` with the images and videos of ``requests``.

    ``requests[i]`` holds the media that ``texts[i]`` has placeholders for, in order. Videos go
    in with their metadata and ``do_sample_frames=False`` (they are sampled already); images as
    images. Returns the processor's BatchFeature (tensors).
    """
    from cac_align.vlm.backend import images_of, videos_of

    videos, metadata, images = [], [], []
    for request in requests:
        for video in videos_of(request):
            frames, meta = video_metadata(video)
            videos.append(frames)
            metadata.append(meta)
        images.extend(images_of(request))
    kwargs: dict[str, Any] = {"text": texts, "padding": padding, "return_tensors": "pt"}
    if pad_to_multiple_of is not None:  # a static cache's length bucket
        kwargs["pad_to_multiple_of"] = pad_to_multiple_of
    if videos:
        kwargs.update(videos=videos, video_metadata=metadata, videos_kwargs={"do_sample_frames": False})
    if images:
        kwargs["images"] = images
    return processor(**kwargs)
