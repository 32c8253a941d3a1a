"""Minimal reproduction, for vLLM's issue tracker: vLLM 0.32 normalises Qwen3-VL *video* pixels with
the *image* processor's mean/std when mm_device_do_normalize is on (its default), so a checkpoint
whose video processor normalises otherwise (transformers' Qwen3-VL defaults: CLIP constants for
images, 0.5 for videos) gets other log-probabilities from vLLM than from transformers, with
identical prompt token ids. Self-contained (transformers + vllm only; a tiny random model built
here); run in the vLLM environment (tests/conformance/build_vllm_venv.sh), about 20 s on a CPU:

    .venv-vllm/bin/python tests/conformance/repro_video_normalization.py 1   # default: logprobs differ
    .venv-vllm/bin/python tests/conformance/repro_video_normalization.py 0   # mm_device_do_normalize=False: agree

Where it happens (vLLM 0.32): the fused input norm of the Qwen3-VL vision tower takes its mean/std
from the image processor's config only (vllm/model_executor/layers/fusion/mm_input_norm.py) and is
applied to video pixels too. cac-align serve passes --no-mm-device-do-normalize.
"""
import os, sys, tempfile
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in-process (no spawn)
import numpy as np, torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import (PreTrainedTokenizerFast, Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration,
                          Qwen3VLProcessor, Qwen3VLVideoProcessor)
from transformers.video_utils import VideoMetadata

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
TEMPLATE = ("{%- for m in messages -%}<|im_start|>{{ m['role'] }}\n{%- for p in m['content'] -%}"
            "{%- if p['type'] == 'video' -%}<|vision_start|><|video_pad|><|vision_end|>{%- else -%}{{ p['text'] }}{%- endif -%}"
            "{%- endfor -%}<|im_end|>\n{%- endfor -%}{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}")
bpe = Tokenizer(models.BPE()); bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False); bpe.decoder = decoders.ByteLevel()
bpe.train_from_iterator(["Is the video normal? <0.5 seconds> 0123456789"] * 4, trainers.BpeTrainer(
    vocab_size=400, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=TEMPLATE,
                              extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                                    "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"})
ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL}
cfg = Qwen3VLConfig(
    vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128, patch_size=16,
                       spatial_merge_size=2, temporal_patch_size=2, deepstack_visual_indexes=[0, 1], num_position_embeddings=144),
    text_config=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                     head_dim=64, vocab_size=len(tok), eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                     rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [12, 10, 10], "mrope_interleaved": True}),
    image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
    vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)
torch.manual_seed(0)
model = Qwen3VLForConditionalGeneration(cfg).eval()
# The point: the image processor keeps its (CLIP) default mean/std, the video processor its (0.5) default.
proc = Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(patch_size=16, merge_size=2),
                        video_processor=Qwen3VLVideoProcessor(patch_size=16, merge_size=2), tokenizer=tok, chat_template=TEMPLATE)
path = tempfile.mkdtemp(); model.save_pretrained(path); proc.save_pretrained(path)

T, H, W = 8, 64, 96
video = np.random.default_rng(0).integers(0, 256, (T, H, W, 3), dtype=np.uint8)
meta = dict(fps=4.0, frames_indices=list(range(T)), total_num_frames=T, duration=T / 4.0)
prompt = proc.apply_chat_template([{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Is the video normal?"}]}],
                                  add_generation_prompt=True, tokenize=False)
hf_in = proc(text=[prompt], videos=[video], video_metadata=[VideoMetadata(**meta)], do_sample_frames=False, return_tensors="pt")
with torch.no_grad():
    hf_lp = torch.log_softmax(model(**hf_in).logits[0].double(), -1)
hf_ids = hf_in["input_ids"][0].tolist()

from vllm import LLM, SamplingParams
llm = LLM(model=path, dtype="float32", max_model_len=2048, enforce_eager=True, mm_device_do_normalize=sys.argv[1:] != ["0"])
out = llm.generate({"prompt": prompt, "multi_modal_data": {"video": (video, meta)}},
                   SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
assert list(out.prompt_token_ids) == hf_ids, "prompt token ids differ"
diff = max(abs(hf_lp[i - 1, hf_ids[i]].item() - next(iter(out.prompt_logprobs[i].values())).logprob) for i in range(1, len(hf_ids)))
print(f"mm_device_do_normalize={sys.argv[1:] != ['0']}: {len(hf_ids)} prompt tokens identical; "
      f"max |logprob(transformers) - logprob(vLLM)| = {diff:.3g}")
