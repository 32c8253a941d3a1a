"""VideoReward asked as VideoAlign's inference code asks it.

Expected values are worked out by hand from github.com/KwaiVGI/VideoAlign at
219ab9db64c045e5181a2202d11f686439351292:

- ``vision_process.py`` 26-37 (constants: factor 28, VIDEO_MIN_PIXELS 128*28*28 = 100352,
  FRAME_FACTOR 2, FPS_MIN_FRAMES 4, FPS_MAX_FRAMES 768), 129-166 (``smart_nframes``: clamp,
  then ``round_by_factor``), 227-270 (decord reader: ``linspace(0, total - 1, n).round()``),
  293-324 (``fetch_video``: ``smart_resize`` with the 100352 floor and the config's max_pixels,
  bicubic antialiased resize of the uint8 frames);
- ``inference.py`` 122-203 (one user turn, video then text; processor padding on the right;
  ``(x - mean) / std`` then ``Overall = VQ + MQ + TA``);
- ``trainer.py`` 59-173 (``rm_head`` bias-free; ``self.model(..., position_ids=position_ids)``
  with None; logits at the three special tokens, the diagonal);
- ``train_reward.py`` 43-63, 93-110, 118-132, 176-181 (special tokens added, embeddings
  resized, LoRA on every Linear/Embedding outside the excluded names, "visual" excluded unless
  vision_lora); ``utils.py`` 163-198 (``checkpoint-N``, latest first; ``model.pth``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cac_align.rewards.registry import build_reward
from cac_align.rewards.video_reward import (
    REWARD_TOKENS,
    VideoAlignSettings,
    VideoReward,
    build_tiny_qwen2_vl,
    build_tiny_video_reward,
    convert_checkpoint,
    frame_count,
    load_video_reward,
    reward_logits,
    reward_model_class,
    videoalign_frames,
)
from cac_align.rewards.video_reward import _BASE_KEYS
from cac_align.video import Video, VideoError

TINY = {"name": "video_reward", "model": {"name": "tiny-random:video_reward", "dtype": "float32", "device": "cpu"}}


def _video(frames, height, width, fps, seed=0):
    rng = np.random.default_rng(seed)
    return Video(rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8), fps)


# ---------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "total, fps, expected",
    [
        (81, 16.0, [0, 9, 18, 27, 36, 44, 53, 62, 71, 80]),  # Wan: 10.125 -> 10
        (49, 24.0, [0, 16, 32, 48]),  # 4.08 -> the floor of 4
        (20, 8.0, [0, 6, 13, 19]),  # 5 frames -> round(2.5) = 2 (half to even) -> 4
        (3, 16.0, [0, 2]),  # the cap min(768, 3) floored to even: 2
    ],
)
def test_frame_indices_are_their_readers(total, fps, expected):
    frames, indices = videoalign_frames(_video(total, 32, 32, fps), fps=2.0)
    assert indices == expected
    assert frames.shape[0] == len(expected) and frames.dtype == torch.uint8


def test_their_rounding_is_not_qwen_vl_utils_floor():
    from qwen_vl_utils.vision_process import smart_nframes

    # 92 frames at 16 fps: 11.5 wanted; their copy rounds 5.75 to 6 pairs, the package floors.
    assert frame_count(92, 16.0, 2.0) == 12
    assert smart_nframes({"fps": 2.0}, total_frames=92, video_fps=16.0) == 10
    assert frame_count(81, 16.0, num_frames=7) == 8  # nframes: round(3.5) = 4 pairs
    with pytest.raises(VideoError, match="at least 2 frames"):
        frame_count(1, 16.0, 2.0)


@pytest.mark.parametrize(
    "height, width, size",
    [
        (480, 832, (336, 588)),  # 476x840 is over 200704: beta = sqrt(399360 / 200704), floored to 28s
        (64, 96, (280, 392)),  # under the 100352 floor: upscaled, beta = sqrt(100352 / 6144), ceiled
        (48, 48, (336, 336)),
    ],
)
def test_frames_are_resized_on_uint8_to_their_bounds(height, width, size):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as tvf

    video = _video(17, height, width, 16.0, seed=3)
    frames, indices = videoalign_frames(video, fps=2.0, max_pixels=200704)
    assert tuple(frames.shape[-2:]) == size and indices == [0, 5, 11, 16]
    source = torch.from_numpy(np.asarray(video.frames)[[5]]).permute(0, 3, 1, 2)
    direct = tvf.resize(source, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)
    assert torch.equal(frames[1:2], direct)  # uint8 in, uint8 out, as their reader resizes


# ---------------------------------------------------------------------------------------
# Prompt, tokens, positions
# ---------------------------------------------------------------------------------------
# A stand-in of their prompt_template.py in our words: the same constant names and shape.
STAND_IN = '''
SIMPLE_PROMPT = """Judge {dimension_name}."""

DETAILED_PROMPT_WITH_SPECIAL_TOKEN = """
Look at it.
Looks: <|VQ_reward|>
Moves: <|MQ_reward|>
Prompt - {text_prompt}
Follows: <|TA_reward|>
"""

def build_prompt(prompt, dimension, template_type):
    raise SystemExit("never run")
'''


def _checkout(root):
    root.mkdir(parents=True, exist_ok=True)
    (root / "prompt_template.py").write_text(STAND_IN)
    return root


def test_what_reaches_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDEOALIGN_REPO", str(_checkout(tmp_path / "VideoAlign")))
    reward = build_reward(TINY)
    assert reward.prompt_source == f"authors_script:{(tmp_path / 'VideoAlign' / 'prompt_template.py').resolve()}"
    videos = [_video(33, 64, 96, 16.0), _video(20, 48, 48, 8.0, seed=1)]
    requests = [reward.request(v, p) for v, p in zip(videos, ["a cat", "two red birds fly"])]
    batch = reward.inputs(requests)
    # 33 frames at 16 fps -> 4 frames [0, 11, 21, 32] at 280x392: (4/2) x (280/14) x (392/14) patches
    assert requests[0]["indices"] == [0, 11, 21, 32] and requests[1]["indices"] == [0, 6, 13, 19]
    assert batch["video_grid_thw"].tolist() == [[2, 20, 28], [2, 24, 24]]
    tokenizer = reward.processor.tokenizer
    for row, (prompt, pads) in enumerate([("a cat", 2 * 10 * 14), ("two red birds fly", 2 * 12 * 12)]):
        text = (
            # the tiny chat template writes no newlines of its own (Qwen2-VL's real one does)
            "<|im_start|>user<|vision_start|>" + "<|video_pad|>" * pads + "<|vision_end|>"
            + f"\nLook at it.\nLooks: <|VQ_reward|>\nMoves: <|MQ_reward|>\nPrompt - {prompt}\nFollows: <|TA_reward|>\n"
            + "<|im_end|><|im_start|>assistant"
        )
        ids = tokenizer(text)["input_ids"]
        got = batch["input_ids"][row].tolist()
        assert got[: len(ids)] == ids  # padded on the right
        assert set(got[len(ids):]) <= {tokenizer.pad_token_id}
    # positions: their forward gives the text model none, so tokens are numbered 0..L-1 in all
    # three rotary sections; Qwen2-VL's own 3-D multimodal positions give other scores.
    model = reward.model
    with torch.no_grad():
        ours = reward_logits(model, dict(batch), reward.reward_ids)
        inner = model.model
        embeds = inner.get_input_embeddings()(batch["input_ids"])
        feats = torch.cat(list(inner.get_video_features(batch["pixel_values_videos"], batch["video_grid_thw"]).pooler_output))
        embeds = embeds.masked_scatter((batch["input_ids"] == model.config.video_token_id)[..., None], feats)
        length = batch["input_ids"].shape[1]
        mask = torch.isin(batch["input_ids"], torch.tensor(reward.reward_ids))

        def head(position_ids):
            hidden = inner.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], position_ids=position_ids).last_hidden_state
            return model.rm_head(hidden)[mask].view(2, 3)  # the released 1-output head, read at each token

        plain = torch.arange(length).view(1, 1, -1).expand(3, 2, -1)
        kinds = (batch["input_ids"] == model.config.video_token_id).int() * 2  # the processor's mm_token_type_ids: 2 = video
        three_d, _ = inner.get_rope_index(batch["input_ids"], kinds, video_grid_thw=batch["video_grid_thw"], attention_mask=batch["attention_mask"])
    torch.testing.assert_close(ours, head(plain), rtol=0, atol=1e-6)
    assert (ours - head(three_d)).abs().max() > 1e-4


def test_scores_are_normalised_and_summed_as_theirs(monkeypatch):
    monkeypatch.delenv("VIDEOALIGN_REPO", raising=False)
    reward = build_reward(TINY)
    videos = [_video(17, 48, 64, 16.0, seed=s) for s in range(3)]
    out = reward(videos, ["a", "b", "c"])
    assert out.valid.all() and out.details[0]["prompt_source"] == "built_in_paraphrase"
    norm = reward.settings.norm
    for score, detail in zip(out.scores, out.details):
        raw = detail["raw"]
        vq, mq, ta = ((raw[d] - norm[f"{d}_mean"]) / norm[f"{d}_std"] for d in ("VQ", "MQ", "TA"))
        assert detail["VQ"] == pytest.approx(vq) and detail["MQ"] == pytest.approx(mq) and detail["TA"] == pytest.approx(ta)
        assert score == pytest.approx(vq + mq + ta)
    # one batch = one video at a time (float32)
    single = [reward([v], [p]).scores[0] for v, p in zip(videos, "abc")]
    np.testing.assert_allclose(out.scores, single, atol=1e-5)
    raw_ta = build_reward({**TINY, "score": "TA", "use_norm": False})(videos[:1], ["a"])
    assert raw_ta.scores[0] == pytest.approx(out.details[0]["raw"]["TA"], abs=1e-6)


def test_bad_inputs_are_invalid_not_scored(monkeypatch):
    monkeypatch.delenv("VIDEOALIGN_REPO", raising=False)
    reward = build_reward(TINY)
    out = reward([_video(1, 32, 32, 16.0), _video(9, 32, 32, 16.0), _video(9, 32, 32, 16.0)], ["one frame", "sneaky <|TA_reward|>", None])
    assert not out.valid.any() and np.isnan(out.scores).all()
    assert [d["error_kind"] for d in out.details] == ["video", "prompt", "prompt"]
    assert "at least 2 frames" in out.details[0]["error"] and "<|TA_reward|>" in out.details[1]["error"]


def test_config_errors_name_the_key():
    from cac_align.rewards.registry import reward_config

    with pytest.raises(ValueError, match="fps or num_frames, not both"):
        reward_config({"name": "video_reward", "fps": 2.0, "num_frames": 8})
    with pytest.raises(ValueError, match="score must be one of"):
        reward_config({"name": "video_reward", "score": "overall"})
    with pytest.raises(ValueError, match="unknown key 'max_pixel'"):
        reward_config({"name": "video_reward", "max_pixel": 1000})
    with pytest.raises(ValueError, match="runs in-process only"):
        reward_config({"name": "video_reward", "model": {"name": "KwaiVGI/VideoReward", "backend": "openai"}})


# ---------------------------------------------------------------------------------------
# Loading a checkpoint laid out as their trainer writes it
# ---------------------------------------------------------------------------------------
def _old_names(state):
    """transformers 4.45 names (what their model.pth holds) from transformers 5 names."""
    out = {}
    for name, tensor in state.items():
        prefix = "base_model.model." if name.startswith("base_model.model.") else ""
        rest = name[len(prefix):]
        if rest.startswith("model.language_model."):
            rest = "model." + rest[len("model.language_model."):]
        elif rest.startswith("model.visual."):
            rest = rest[len("model."):]
        out[prefix + rest] = tensor
    return out


def _authors_checkpoint(tmp_path, output_dim=1, layout="full"):
    """A base folder and a VideoReward folder built the way their training writes one: the base
    with the reward tokens, resized embeddings, LoRA (r 4, alpha 8) outside lm_head / rm_head /
    embed_tokens / visual, trained (here: random) LoRA B, head and token embeddings; the wrapped
    model's state dict under 4.45 names in checkpoint-7/model.pth (and an older checkpoint-3).
    ``model_config.json`` has the released checkpoint's fields (KwaiVGI/VideoReward: output_dim 1,
    use_special_tokens true, reward_token "special", torch_dtype bfloat16; lora_namespan_exclude
    as their trainer saves it, parsed, "visual" added: train_reward.py 176-181).
    ``layout="partial"``: checkpoint-7 holds what their train.sh saves by default (save_full_model
    False): ``adapter_model.safetensors`` (peft's names, no adapter name) and
    ``non_lora_state_dict.pth`` (the trained non-LoRA weights: rm_head, token embeddings)."""
    from peft import LoraConfig, get_peft_model

    base_dir, ckpt = tmp_path / "base", tmp_path / "VideoReward"
    build_tiny_qwen2_vl(seed=5).save_pretrained(str(base_dir))
    model = reward_model_class().from_pretrained(str(base_dir), output_dim=output_dim, dtype=torch.float32, key_mapping=_BASE_KEYS)
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(base_dir), padding_side="right")
    processor.tokenizer.add_special_tokens({"additional_special_tokens": list(REWARD_TOKENS)})
    model.resize_token_embeddings(len(processor.tokenizer))
    excluded = ["lm_head", "rm_head", "embed_tokens", "visual"]
    targets = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)) and not any(x in n for x in excluded)]
    model = get_peft_model(model, LoraConfig(target_modules=targets, r=4, lora_alpha=8, lora_dropout=0.0, bias="none"))
    torch.manual_seed(11)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "rm_head" in name:
                param.normal_(std=0.3)
        model.get_input_embeddings().weight[-3:].normal_(std=1.0)
    model.eval()
    ckpt.mkdir()
    norm = {"VQ_mean": 1.0, "VQ_std": 2.0, "MQ_mean": 0.0, "MQ_std": 1.0, "TA_mean": -1.0, "TA_std": 0.5}
    config = {
        "data_config": {"meta_data": "x", "data_dir": "x", "fps": 2.0, "num_frames": None, "max_frame_pixels": 200704,
                        "eval_dim": ["VQ", "MQ", "TA"], "prompt_template_type": "detailed_special", "sample_type": "uniform"},
        "training_args": {},
        "model_config": {"model_name_or_path": str(base_dir), "output_dim": output_dim, "use_special_tokens": True, "reward_token": "special",
                         "torch_dtype": "bfloat16", "loss_type": "btt"},
        "peft_lora_config": {"lora_enable": True, "vision_lora": False, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.05,
                             "lora_namespan_exclude": ["lm_head", "rm_head", "embed_tokens", "visual"], "num_lora_modules": -1},
        "inference_config": norm,
    }
    (ckpt / "model_config.json").write_text(json.dumps(config))
    for step in (3, 7):
        (ckpt / f"checkpoint-{step}").mkdir()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if layout == "full":
        torch.save(_old_names(state), ckpt / "checkpoint-7" / "model.pth")
    else:
        from safetensors.torch import save_file

        old = _old_names(state)
        save_file({k.replace(".default.", "."): v for k, v in old.items() if "lora_" in k}, str(ckpt / "checkpoint-7" / "adapter_model.safetensors"))
        trained = {k: v for k, v in old.items() if k.endswith(("rm_head.weight", "embed_tokens.weight"))}
        assert len(trained) == 2
        torch.save(trained, ckpt / "checkpoint-7" / "non_lora_state_dict.pth")
    torch.save({"nothing": torch.zeros(1)}, ckpt / "checkpoint-3" / "model.pth")
    return model, processor, ckpt, norm


@pytest.mark.parametrize("output_dim", [1, 3])
def test_reward_tokens_are_read_as_their_trainer_reads_them(output_dim):
    # trainer.py 159-166: logits at the three tokens viewed (B, 3, N); N = 3 -> diagonal, N = 1 ->
    # each token's one output. Expected here by token position, not by mask: VQ is read at the VQ
    # token with output 0 (either head), MQ at the MQ token with output 0 (N = 1) or 1 (N = 3), ...
    base = build_tiny_qwen2_vl(seed=3)
    model = reward_model_class()(base.model.config, output_dim=output_dim)
    model.load_state_dict(base.model.state_dict(), strict=False)
    torch.nn.init.normal_(model.rm_head.weight, std=0.5)
    processor = base.processor
    processor.tokenizer.add_special_tokens({"additional_special_tokens": list(REWARD_TOKENS)})
    model.resize_token_embeddings(len(processor.tokenizer))
    reward = VideoReward(model.eval(), processor, VideoAlignSettings(base_model="tiny", output_dim=output_dim))
    batch = reward.inputs([reward.request(_video(9, 32, 32, 16.0, seed=s), p) for s, p in enumerate(["a", "a longer prompt"])])
    with torch.no_grad():
        got = reward_logits(model, dict(batch), reward.reward_ids)
        inner = model.model
        embeds = inner.get_input_embeddings()(batch["input_ids"])
        feats = torch.cat(list(inner.get_video_features(batch["pixel_values_videos"], batch["video_grid_thw"]).pooler_output))
        embeds = embeds.masked_scatter((batch["input_ids"] == model.config.video_token_id)[..., None], feats)
        hidden = inner.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).last_hidden_state
    assert got.shape == (2, 3)
    for row in range(2):
        ids = batch["input_ids"][row].tolist()
        for k, token in enumerate(reward.reward_ids):
            with torch.no_grad():
                out = model.rm_head(hidden[row, ids.index(token)])
            assert float(got[row, k]) == pytest.approx(float(out[0 if output_dim == 1 else k]), abs=1e-5)
    if output_dim == 1:  # the same head output read at three places: three different numbers
        assert len({round(float(v), 6) for v in got[0]}) == 3


def test_head_sizes_their_trainer_cannot_read_are_refused(tmp_path):
    _, _, ckpt, _ = _authors_checkpoint(tmp_path)
    config = json.loads((ckpt / "model_config.json").read_text())
    assert VideoAlignSettings.from_json(ckpt / "model_config.json").output_dim == 1
    config["model_config"]["output_dim"] = 2
    (ckpt / "model_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="head of 1 or 3 outputs.*output_dim=2"):
        VideoAlignSettings.from_json(ckpt / "model_config.json")


@pytest.mark.parametrize("output_dim", [1, 3])
def test_their_checkpoint_loads(tmp_path, monkeypatch, output_dim):
    monkeypatch.delenv("VIDEOALIGN_REPO", raising=False)
    wrapped, processor, ckpt, norm = _authors_checkpoint(tmp_path, output_dim)
    videos = [_video(17, 48, 64, 16.0, seed=s) for s in range(2)]
    # expected: the authors' wrapped (unmerged) model on the same processed batch
    settings = VideoAlignSettings.from_json(ckpt / "model_config.json")
    probe = VideoReward(wrapped.base_model.model, processor, settings)
    batch = probe.inputs([probe.request(v, p) for v, p in zip(videos, ["x", "y"])])
    with torch.no_grad():
        raw = reward_logits(wrapped.base_model.model, dict(batch), probe.reward_ids)
    expected = [sum((float(raw[i, k]) - norm[f"{d}_mean"]) / norm[f"{d}_std"] for k, d in enumerate(("VQ", "MQ", "TA"))) for i in range(2)]

    section = {"name": "video_reward", "model": {"name": str(ckpt), "dtype": "float32", "device": "cpu"}}
    with pytest.raises(ValueError, match="allow_pickle: true"):
        build_reward(section)
    out = build_reward({**section, "allow_pickle": True})(videos, ["x", "y"])
    np.testing.assert_allclose(out.scores, expected, atol=1e-4)
    # converted once to safetensors, it loads without the setting, to the same scores
    assert convert_checkpoint(ckpt).name == "model.safetensors"
    again = build_reward(section)(videos, ["x", "y"])
    np.testing.assert_allclose(again.scores, out.scores, atol=1e-6)
    # an older step is asked for by number; its weights do not fit, and the error says so
    with pytest.raises(ValueError, match="does not fit"):
        load_video_reward(str(ckpt), step=3, dtype="float32", device="cpu", allow_pickle=True)


def test_the_base_loads_into_the_reward_class_with_its_text_model():
    # the base as Qwen2-VL-2B-Instruct is saved (transformers 4 names: model.layers.*, visual.*):
    # every weight reaches our subclass, the text model's included (transformers maps them by
    # class name for its own class only)
    from transformers import Qwen2VLForConditionalGeneration

    tiny = build_tiny_qwen2_vl(seed=7)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        tiny.save_pretrained(folder)
        plain = Qwen2VLForConditionalGeneration.from_pretrained(folder).state_dict()
        ours = reward_model_class().from_pretrained(folder, output_dim=1, key_mapping=_BASE_KEYS).state_dict()
    assert set(plain) <= set(ours) and set(ours) - set(plain) == {"rm_head.weight"}
    assert all(torch.equal(plain[k], ours[k]) for k in plain)


def test_the_partial_layout_of_their_train_script_loads_to_the_same_scores(tmp_path, monkeypatch):
    """train.sh saves only what training changed (adapter + non_lora_state_dict.pth); the rest is
    the base's, as their loader fills it (utils.py 190-198). Same scores as the full layout."""
    monkeypatch.delenv("VIDEOALIGN_REPO", raising=False)
    _, _, full, _ = _authors_checkpoint(tmp_path / "full")
    _, _, partial, _ = _authors_checkpoint(tmp_path / "partial", layout="partial")
    videos = [_video(17, 48, 64, 16.0, seed=s) for s in range(2)]
    section = {"name": "video_reward", "model": {"dtype": "float32", "device": "cpu"}, "allow_pickle": True}
    expected = build_reward({**section, "model": {**section["model"], "name": str(full)}})(videos, ["x", "y"]).scores
    got = build_reward({**section, "model": {**section["model"], "name": str(partial)}})(videos, ["x", "y"])
    assert got.valid.all()
    np.testing.assert_allclose(got.scores, expected, atol=1e-5)
    # converted: the file says it is partial, and loads the same way without the pickle setting
    convert_checkpoint(partial)
    again = build_reward({"name": "video_reward", "model": {"name": str(partial), "dtype": "float32", "device": "cpu"}})(videos, ["x", "y"])
    np.testing.assert_allclose(again.scores, expected, atol=1e-5)
    # a LoRA weight missing is still an error
    (partial / "checkpoint-7" / "model.safetensors").unlink()
    from safetensors.torch import load_file, save_file

    adapter = load_file(str(partial / "checkpoint-7" / "adapter_model.safetensors"))
    save_file(dict(list(adapter.items())[1:]), str(partial / "checkpoint-7" / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="does not fit"):
        load_video_reward(str(partial), dtype="float32", device="cpu", allow_pickle=True)


def test_tiny_recipe_runs_through_the_registry():
    reward = build_reward(TINY)
    assert isinstance(reward, VideoReward) and reward.name == "video_reward"
    model, processor, _ = build_tiny_video_reward()
    assert processor.tokenizer.convert_tokens_to_ids(list(REWARD_TOKENS)) == reward.reward_ids
    assert model.rm_head.bias is None and model.rm_head.out_features == 1  # as released


def test_bfloat16_computes_as_their_inference_and_merging_is_a_setting(tmp_path, monkeypatch):
    """In bfloat16 the default is their computation: the base in bf16, the LoRA unmerged with its
    weights in bf16 too (their pinned peft 0.10.0, lora/layer.py 117-120, casts a new adapter to
    its base layer's dtype; every LoRA product is then bf16). Expected: that model built here by
    hand. ``merge_lora: true`` (float32 adapters folded into bf16 weights) scores otherwise."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoProcessor

    from cac_align.rewards.video_reward import _current_names

    monkeypatch.delenv("VIDEOALIGN_REPO", raising=False)
    _, _, ckpt, _ = _authors_checkpoint(tmp_path)
    videos = [_video(17, 48, 64, 16.0, seed=s) for s in range(3)]
    section = {"name": "video_reward", "model": {"name": str(ckpt), "dtype": "bfloat16", "device": "cpu"}, "allow_pickle": True, "use_norm": False, "batch_size": 3}
    ours = build_reward(section)
    assert ours.model.dtype == torch.bfloat16
    lora_weights = [p for n, p in ours.model.named_parameters() if "lora_" in n]
    assert lora_weights and all(p.dtype == torch.bfloat16 for p in lora_weights)  # unmerged, in the model's dtype

    # their model, by hand (train_reward.py 82-132): from_pretrained in bf16, tokens, resize, then
    # model.to(bfloat16) (which also rounds the rotary inv_freq buffers to bf16), LoRA in bf16,
    # the checkpoint's state, no merge
    base = str(tmp_path / "base")
    processor = AutoProcessor.from_pretrained(base, padding_side="right")
    processor.tokenizer.add_special_tokens({"additional_special_tokens": list(REWARD_TOKENS)})
    theirs = reward_model_class().from_pretrained(base, output_dim=1, dtype=torch.bfloat16, key_mapping=_BASE_KEYS)
    theirs.resize_token_embeddings(len(processor.tokenizer))
    theirs.to(torch.bfloat16)
    excluded = ["lm_head", "rm_head", "embed_tokens", "visual"]
    targets = [n for n, m in theirs.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)) and not any(x in n for x in excluded)]
    theirs = get_peft_model(theirs, LoraConfig(target_modules=targets, r=4, lora_alpha=8, lora_dropout=0.0, bias="none"), autocast_adapter_dtype=False)
    theirs.load_state_dict(_current_names(torch.load(ckpt / "checkpoint-7" / "model.pth", weights_only=True)), strict=True)
    theirs.eval()
    batch = ours.inputs([ours.request(v, p) for v, p in zip(videos, "abc")])
    with torch.no_grad():
        expected = reward_logits(theirs.base_model.model, dict(batch), ours.reward_ids).float()
    got = ours(videos, list("abc"))
    got_raw = torch.tensor([[d["raw"][k] for k in ("VQ", "MQ", "TA")] for d in got.details])
    torch.testing.assert_close(got_raw, expected, rtol=0, atol=1e-6)

    merged = build_reward({**section, "merge_lora": True})
    assert not any("lora_" in n for n, _ in merged.model.named_parameters())
    merged_raw = torch.tensor([[d["raw"][k] for k in ("VQ", "MQ", "TA")] for d in merged(videos, list("abc")).details])
    assert (merged_raw - expected).abs().max() > 1e-3  # bf16 rounding of the merged weights: not their numbers
    # in float32 the two agree
    f32 = {**section, "model": {**section["model"], "dtype": "float32"}}
    unmerged32 = build_reward(f32)(videos, list("abc")).scores
    merged32 = build_reward({**f32, "merge_lora": True})(videos, list("abc")).scores
    np.testing.assert_allclose(unmerged32, merged32, atol=1e-4)
