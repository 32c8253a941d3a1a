"""CaC stage 3 as an ms-swift plugin: ``swift rlhf --external_plugins <this file>`` registers

- the template ``cac_qwen3_vl``: Qwen3-VL's, except that a video given as a CaC spec
  (:mod:`cac_rows`) is shown with our frames and our ``VideoMetadata``, through the same
  processor call our in-process backend makes, so every video has its own fps and timestamps;
- the multi-turn scheduler ``cac``: turn 1 is the row's question over the 4 fps scan; an abnormal
  turn 1 with a usable window gets turn 2 (its window cut from the source and resampled at
  8 fps, our turn-2 question), as our stage-3 rollouts do; every other rollout ends after turn 1;
- the reward ``cac_stage3``: CaC Eq. 2-6, our :func:`~cac_align.cac.train.rewards.cac_reward`.

Read against ms-swift 4.6.0 (its own venv: ``tests/conformance/build_swift_venv.sh``). This file
is passed to ms-swift by path and ms-swift puts its folder on ``sys.path``, which is why the
folder holds nothing whose name could hide another package. See docs/cac_training.md.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from swift.rewards import ORM, orms
from swift.rollout import MultiTurnScheduler, multi_turns
from swift.template import Template, register_template
from swift.template.templates.qwen import QwenTemplateMeta, Qwen3VLTemplate

from cac_align.integrations.ms_swift.cac_rows import is_spec, load_spec, plan_turn2, rollout_reward
from cac_align.video import Video
from cac_align.vlm.hf import video_metadata

TEMPLATE = "cac_qwen3_vl"
SCHEDULER = "cac"
REWARD = "cac_stage3"
VIDEO_MARKUP = "<|vision_start|><|video_pad|><|vision_end|>"  # how Qwen-VL chat templates write a video part


class CaCQwen3VLTemplate(Qwen3VLTemplate):
    """Qwen3-VL's template with CaC's videos (module doc); other media go Qwen3-VL's way."""

    def init_processor(self, processor: Any) -> None:
        super().init_processor(processor)
        if processor is not None:  # the checkpoint's own ids (Qwen's are hard-coded in the parent)
            tokenizer = processor.tokenizer
            self.image_token_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
            self.video_token_id = tokenizer.convert_tokens_to_ids("<|video_pad|>")

    def replace_tag(self, media_type: str, index: int, inputs: Any) -> list:
        if media_type != "video" or not is_spec(inputs.videos[index]):
            return super().replace_tag(media_type, index, inputs)
        video = load_spec(inputs.videos[index])
        if self.mode == "vllm":  # frames and their metadata, sampled already, to vLLM's processor
            frames, metadata = video_metadata(video)
            inputs.videos[index] = (torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(),
                                    {"fps": metadata.fps, "frames_indices": list(metadata.frames_indices),
                                     "total_num_frames": metadata.total_num_frames})
            inputs.mm_processor_kwargs["do_sample_frames"] = False
            return [VIDEO_MARKUP]
        inputs.videos[index] = video  # expanded in _encode
        return ["<|video_pad|>"]

    def _encode(self, inputs: Any) -> dict:
        if not inputs.videos or not all(is_spec(v) or isinstance(v, Video) for v in inputs.videos) or inputs.images:
            return super()._encode(inputs)
        encoded = Template._encode(self, inputs)  # the text; replace_tag loads each video and leaves one placeholder
        expansions, features = [], []
        for video in inputs.videos:
            frames, metadata = video_metadata(video)
            out = self.processor(text=[VIDEO_MARKUP], videos=[frames], video_metadata=[metadata],
                                 videos_kwargs={"do_sample_frames": False}, return_tensors="pt")
            expansions.append((out["input_ids"][0].tolist(), out.get("mm_token_type_ids")))
            features.append(out)
        places = [i for i, token in enumerate(encoded["input_ids"]) if token == self.video_token_id]
        if len(places) != len(expansions):
            raise ValueError(f"{len(expansions)} CaC videos but {len(places)} video placeholders in the text")
        input_ids, labels, loss_scale = self._extend_tokens(encoded["input_ids"], encoded["labels"], encoded.get("loss_scale"), places,
                                                            lambda i: expansions[i][0])
        encoded.update(input_ids=input_ids, labels=labels, loss_scale=loss_scale)
        encoded["pixel_values_videos"] = torch.cat([f["pixel_values_videos"] for f in features])
        encoded["video_grid_thw"] = torch.cat([f["video_grid_thw"] for f in features])
        if self.requires_mm_token_type_ids:  # Qwen3-VL on transformers >= 5.3: the processor's own token types
            types = [0] * len(input_ids)
            shift = 0
            for place, (ids, kinds) in zip(places, expansions):
                types[place + shift:place + shift + len(ids)] = kinds[0].tolist()
                shift += len(ids) - 1
            encoded["mm_token_type_ids"] = torch.tensor(types)
        return encoded


def _text(tokenizer: Any, choice: Any) -> str:
    """A turn's answer as our stage 3 reads it: its sampled ids decoded without special tokens."""
    if choice.token_ids:
        return tokenizer.decode(list(choice.token_ids), skip_special_tokens=True)
    return choice.message.content or ""


def _cac(request: Any) -> dict:
    data = request.data_dict.get("cac") if request.data_dict else None
    if data is None:
        raise ValueError("the dataset row has no 'cac' column: build the dataset with `python -m cac_align.integrations.ms_swift prepare`")
    return json.loads(data) if isinstance(data, str) else data


class CaCScheduler(MultiTurnScheduler):
    """Two turns at most (module doc). Each turn's text goes into ``rollout_infos`` for the reward;
    turn 2 adds the clip's spec to the request's videos (and so to the trained sample's)."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs["max_turns"] = 2
        super().__init__(*args, **kwargs)

    async def on_turn_end(self, infer_request: Any, response_choice: Any, current_turn: int) -> dict:
        text = _text(self.tokenizer, response_choice)
        infos: dict[str, Any] = {f"cac_turn{current_turn}": text}
        if current_turn >= 2 or response_choice.finish_reason == "length":
            return {"done": True, "rollout_infos": infos}
        return {"done": plan_turn2(_cac(infer_request), text) is None, "rollout_infos": infos}

    def step(self, infer_request: Any, response_choice: Any, current_turn: int) -> dict:
        plan = plan_turn2(_cac(infer_request), _text(self.tokenizer, response_choice))
        assert plan is not None, "step() runs only after on_turn_end() planned a turn 2"
        infer_request.messages.append({"role": "user", "content": "<video>" + plan.question})
        infer_request.videos.append(plan.spec)
        infos = {"videos": list(infer_request.videos), "cac_window_s": list(plan.window_s), "cac_clip_fps": plan.clip.fps,
                 "cac_clip_times": plan.clip.timestamps.tolist()}
        return {"infer_request": infer_request, "rollout_infos": infos}


class CaCStage3Reward(ORM):
    """CaC Eq. 2-6 of each rollout (our ``cac_reward``; weights from the row's ``cac`` column)."""

    def __call__(self, completions: list, rollout_infos: list, cac: list, **kwargs: Any) -> list[float]:
        rewards = []
        for completion, infos, data in zip(completions, rollout_infos, cac):
            infos = infos or {}
            data = json.loads(data) if isinstance(data, str) else data
            turn1 = infos.get("cac_turn1", completion)
            turn2 = (infos["cac_turn2"], infos["cac_clip_fps"], infos["cac_clip_times"]) if "cac_turn2" in infos else None
            rewards.append(rollout_reward(data, turn1, turn2).total)
        return rewards


def register() -> None:
    """Register the template, scheduler and reward under their names (idempotent)."""
    register_template(QwenTemplateMeta(TEMPLATE, template_cls=CaCQwen3VLTemplate, default_system=None, thinking_prefix="<think>\n"), exist_ok=True)
    multi_turns[SCHEDULER] = CaCScheduler
    orms[REWARD] = CaCStage3Reward


register()
