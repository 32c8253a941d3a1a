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

        Each (request, choice) pair is one row: the left-padded prompt + prefix, then the
        choice's own tokens (right-padded across choices). log P(choice) is the sum of the
        log-softmax of every choice token given everything before it.
        """
        import numpy as np
        import torch

        if len(prefixes) != len(requests):
            raise ValueError(f"got {len(requests)} requests but {len(prefixes)} prefixes")
        if not choices:
            raise ValueError("choices is empty")
        choice_ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
        if any(not ids for ids in choice_ids):
            raise ValueError(f"every choice must tokenize to at least one token, got {list(choices)}")
        n_choices, longest = len(choices), max(len(ids) for ids in choice_ids)
        out = np.zeros((len(requests), n_choices), dtype=np.float64)
        if longest == 1:
            # Every choice is one token: they all come from the same next-token distribution,
            # so one row per request suffices (same numbers, 1/C of the work).
            firsts = torch.tensor([ids[0] for ids in choice_ids])
            with self._lock, torch.inference_mode():
                for chunk in self._chunks(len(requests)):
                    inputs = self._encode([requests[i] for i in chunk], [prefixes[i] for i in chunk])
                    logits = self.model(**inputs).logits[:, -1].float()
                    probs = torch.softmax(logits, dim=-1)[:, firsts.to(logits.device)]
                    out[list(chunk)] = probs.cpu().numpy().astype(np.float64)
            return out
        with self._lock, torch.inference_mode():
            for chunk in self._chunks(len(requests)):
                rows = [i for i in chunk for _ in range(n_choices)]
                inputs = self._encode([requests[i] for i in rows], [prefixes[i] for i in rows])
                prompt_len = inputs["input_ids"].shape[1]
                tail = torch.full((len(rows), longest), self.tokenizer.pad_token_id, dtype=torch.long)
                tail_mask = torch.zeros((len(rows), longest), dtype=torch.long)
                for r in range(len(rows)):
                    ids = choice_ids[r % n_choices]
                    tail[r, : len(ids)] = torch.tensor(ids)
                    tail_mask[r, : len(ids)] = 1
                device = inputs["input_ids"].device
                for key, value in list(inputs.items()):
                    # Extend every token-aligned tensor (ids, mask, token types) over the choice tokens.
                    if torch.is_tensor(value) and value.dim() == 2 and value.shape == (len(rows), prompt_len):
                        extra = {"input_ids": tail, "attention_mask": tail_mask}.get(key, torch.zeros_like(tail))
                        inputs[key] = torch.cat([value, extra.to(device=device, dtype=value.dtype)], dim=1)
                logits = self.model(**inputs).logits[:, prompt_len - 1 : -1].float()
                logprobs = torch.log_softmax(logits, dim=-1)
                token_lp = logprobs.gather(-1, tail.to(device).unsqueeze(-1)).squeeze(-1) * tail_mask.to(device)
                totals = token_lp.sum(-1).exp().cpu().numpy().astype(np.float64)
                for r, i in enumerate(rows):
                    out[i, r % n_choices] = totals[r]
        return out


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
        {"role": m["role"], "content": [{k: v for k, v in p.items() if k not in ("video", "image")} for p in m["content"]]}
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
