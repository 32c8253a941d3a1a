"""In-process transformers models: loading a VLM and its processor by hub id or local path.

``load_vlm`` is the one loader every recipe uses for a vision-language model (the CaC
Qwen3-VL, UnifiedReward's Qwen2.5-VL / Qwen3-VL). Tests exercise it by saving a tiny model
(:mod:`cac_align.vlm.tiny`) to a temporary directory and loading it back, which is the same
``from_pretrained`` code path as a hub id.
"""

from __future__ import annotations

from typing import Any

from cac_align.loading import check_weights_source, resolve_device, resolve_dtype, weights_error

__all__ = ["HFBackend", "load_vlm", "processor_inputs", "render_chat", "video_metadata"]


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
    model.to(resolve_device(device)).eval()
    return model, processor


class HFBackend:
    """In-process transformers backend: batched ``generate`` and teacher-forced ``choice_probs``.

    Requests are rendered with the processor's chat template; each video goes in with
    ``VideoMetadata`` built from its fps and source timestamps, and frames already sampled
    (``do_sample_frames=False``), so the prompt's ``<t seconds>`` stamps are the source times
    (a turn-2 clip cropped at 2.0 s reads "<2.1 seconds>" for its first pair of frames).
    Batches are left-padded. A lock makes one instance safe to call from a thread pool.

    Args:
        model: an image-text-to-text model (Qwen3-VL, Qwen2.5-VL), in eval mode.
        processor: its processor.
        max_batch_size: requests per forward pass.
        generate_kwargs: extra arguments for ``model.generate`` on every call (e.g.
            ``{"min_new_tokens": 1024}`` to fix the token budget in benchmarks).
    """

    def __init__(self, model: Any, processor: Any, max_batch_size: int = 8, generate_kwargs: dict | None = None):
        import threading

        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.max_batch_size = max_batch_size
        self.generate_kwargs = dict(generate_kwargs or {})
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, name_or_path: str, max_batch_size: int = 8, **load_kwargs: Any) -> "HFBackend":
        """Load by hub id or path (see :func:`load_vlm` for ``load_kwargs``)."""
        model, processor = load_vlm(name_or_path, **load_kwargs)
        return cls(model, processor, max_batch_size=max_batch_size)

    # -- encoding ---------------------------------------------------------------------------
    def _encode(self, requests: Any, prefixes: Any) -> Any:
        """Chat template + assistant prefix per request -> left-padded model inputs."""
        texts = [render_chat(self.processor, request) + prefix for request, prefix in zip(requests, prefixes)]
        return processor_inputs(self.processor, texts, list(requests)).to(self.model.device)

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
        max_new_tokens: int = 1024,
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
            for chunk in self._chunks(len(requests)):
                inputs = self._encode([requests[i] for i in chunk], [""] * len(chunk))
                sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
                output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, **sampling, **self.generate_kwargs)
                new_tokens = output[:, inputs["input_ids"].shape[1] :]
                for row in new_tokens.tolist():
                    row = _strip_after_eos(row, self.model.generation_config.eos_token_id, self.tokenizer.pad_token_id)
                    completions.append(Completion(self.tokenizer.decode(row, skip_special_tokens=True), row))
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
        max_new_tokens: int = 1024,
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

        from cac_align.vlm.backend import Completion

        choice_ids = self._choice_ids(choices)
        completions: list[Completion] = []
        probs = np.full((len(requests), len(choices)), np.nan)
        redo: list[tuple[int, str]] = []
        with self._lock, torch.inference_mode():
            for chunk in self._chunks(len(requests)):
                inputs = self._encode([requests[i] for i in chunk], [""] * len(chunk))
                sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
                # The choices' first-token log-probs at every step, read from the raw logits as the
                # output layer makes them (before any logits processor): (B, C) per step, instead
                # of generate's output_logits, which keeps a (B, vocabulary) float32 copy per step.
                steps = _FirstTokenLogProbs(choice_ids)
                handle = self.model.get_output_embeddings().register_forward_hook(steps)
                try:
                    output = self.model.generate(
                        **inputs, max_new_tokens=max_new_tokens, **sampling, **self.generate_kwargs, return_dict_in_generate=True,
                    )
                finally:
                    handle.remove()
                prompt_len = inputs["input_ids"].shape[1]
                generated = output.sequences[:, prompt_len:]
                cache = output.past_key_values
                cache_len = cache.get_seq_length() if cache is not None else -1  # no cache: every row re-encoded
                rows, ends, firsts = [], [], []
                for r, i in enumerate(chunk):
                    ids = _strip_after_eos(generated[r].tolist(), self.model.generation_config.eos_token_id, self.tokenizer.pad_token_id)
                    completion = Completion(self.tokenizer.decode(ids, skip_special_tokens=True), ids)
                    completions.append(completion)
                    prefix = prefix_of(completion.text)
                    if prefix is None:
                        continue
                    k = _tokens_spelling(self.tokenizer, ids, prefix)
                    if k is None or k >= len(steps.log_probs) or prompt_len + k > cache_len:
                        redo.append((i, prefix))  # the prefix ends inside a token: re-encode this row
                        continue
                    rows.append(r)
                    ends.append(prompt_len + k)
                    firsts.append(steps.log_probs[k][r])
                if rows:
                    keep = torch.tensor(rows, device=output.sequences.device)
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
                cache, mask = result.past_key_values, inputs["attention_mask"]
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
                    logits = self.model(input_ids=tail, attention_mask=mask, past_key_values=cache, position_ids=position_ids, use_cache=True).logits
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
                out[list(chunk)] = self._score_choices(result.past_key_values, mask, mask.sum(-1), first, choice_ids)
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
            logits = self.model(input_ids=tail, attention_mask=full_mask, past_key_values=cache, position_ids=position_ids, use_cache=True).logits
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


class _FirstTokenLogProbs:
    """A forward hook on the output layer during ``generate``: after each forward pass, the
    choices' first-token log-probs at the last position (the next token's distribution), so
    ``log_probs[k]`` (B, C) is what the model gave the k-th generated token's choices. The
    index tensor is built once, on the first call, not once per generated token."""

    def __init__(self, choice_ids: list[list[int]]):
        self.choice_ids = choice_ids
        self.firsts: Any = None
        self.log_probs: list[Any] = []

    def __call__(self, module: Any, args: Any, output: Any) -> None:
        if self.firsts is None:
            import torch

            self.firsts = torch.tensor([ids[0] for ids in self.choice_ids], device=output.device)
        self.log_probs.append(_first_token_log_probs(output[:, -1], self.choice_ids, self.firsts))


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


def _strip_after_eos(row: list[int], eos: Any, pad: int | None) -> list[int]:
    stops = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
    for position, token in enumerate(row):
        if token in stops:
            return row[: position + 1]
    return [t for t in row if t != pad] if pad is not None and pad not in stops else row


# ---------------------------------------------------------------------------------------
# Rendering chats for Qwen-VL processors (shared with the CaC training collator)
# ---------------------------------------------------------------------------------------
def render_chat(processor: Any, messages: Any, add_generation_prompt: bool = True) -> str:
    """The chat template's text for ``messages`` (media replaced by the template's placeholders)."""
    template_messages = [
        {"role": m["role"], "content": [{k: v for k, v in p.items() if k not in ("video", "image", "jpeg")} for p in m["content"]]}
        for m in messages
    ]
    return processor.apply_chat_template(template_messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def video_metadata(video: Any) -> tuple[Any, Any]:
    """(frames, VideoMetadata) for the processor: frames already sampled, source-time stamps.

    The vision tower patches frames in pairs, so an odd count repeats its last frame. Frame
    indices are on the clip's own fps grid, so ``index / fps`` = source seconds and the
    prompt's ``<t seconds>`` stamps are source times.
    """
    import numpy as np
    from transformers.video_utils import VideoMetadata

    frames, stamps = video.frames, video.timestamps
    if len(frames) % 2:
        frames = np.concatenate([frames, frames[-1:]])
        stamps = np.concatenate([stamps, stamps[-1:]])
    indices = np.round(stamps * video.fps).astype(int).tolist()
    return frames, VideoMetadata(total_num_frames=len(frames), fps=video.fps, frames_indices=indices)


def processor_inputs(processor: Any, texts: list[str], requests: list[Any], padding: bool = True) -> Any:
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
    if videos:
        kwargs.update(videos=videos, video_metadata=metadata, videos_kwargs={"do_sample_frames": False})
    if images:
        kwargs["images"] = images
    return processor(**kwargs)
