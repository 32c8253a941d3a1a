"""CaC stage 3 through ms-swift's own GRPO trainer (PyPI ms-swift 4.6.0, its own venv), on the CPU.

``recipes/cac/stage3_swift_tiny.sh`` runs two GRPO steps of a tiny random Qwen3-VL with our plugin
(``cac_align/integrations/ms_swift/cac_plugin.py``: template, two-turn scheduler, reward) on the
rows ``python -m cac_align.integrations.ms_swift prepare`` writes from our stage-3 tiny recipe. A
probe plugin (tests/conformance/swift_probe.py) scripts some answers, so that a random model
reaches turn 2, and records what ms-swift encoded for the loss and the rewards it computed.
Checked here, in our own environment (transformers 5.2x; theirs is 5.19), on those rollouts:

- each conversation's token ids are what ``cac-align score`` builds (:class:`CaCScorer`, the
  same video and turn-1 answer) followed by the sampled answer ids;
- each video has its own timestamps: the scan's on the 4 fps grid, the clip's on its 8 fps grid
  from the window's start;
- the rewards equal our ``cac_reward`` (Eq. 2-6) of the same turns, to 1e-6;
- only the answers carry loss: the inserted turn-2 user tokens (the clip, its question) do not;
- the trainable weights changed.

Build the venv with ``bash tests/conformance/build_swift_venv.sh`` (``CAC_SWIFT_BIN`` names
another bin/ folder). About a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from cac_align.cac.infer import CaCOptions, CaCScorer, sample_capped
from cac_align.cac.judgment import parse_judgment
from cac_align.cac.schema import AnnotationRecord
from cac_align.cac.train.rewards import cac_reward
from cac_align.video import load_video
from cac_align.vlm.backend import BackendBase, Completion
from cac_align.vlm.hf import processor_inputs, render_chat
from cac_align.vlm.tiny import QWEN_LAYOUT_CHAT_TEMPLATE, build_tiny_qwen3_vl
from conftest import REPO_ROOT

pytestmark = pytest.mark.conformance

SWIFT_BIN = Path(os.environ.get("CAC_SWIFT_BIN") or REPO_ROOT / ".venv-swift" / "bin")
STAMP = re.compile(r"<(\d+\.\d) seconds>")


@pytest.fixture(scope="module")
def tiny():
    """The tiny Qwen3-VL with Qwen's chat layout (newlines kept), the layout ms-swift's template
    writes; with TINY_CHAT_TEMPLATE's (no newlines) the two would differ by those newlines."""
    model = build_tiny_qwen3_vl(seed=0)
    model.processor.chat_template = QWEN_LAYOUT_CHAT_TEMPLATE
    return model


@pytest.fixture(scope="module")
def swift_run(tmp_path_factory, cac_data, tiny):
    if not (SWIFT_BIN / "swift").exists():
        pytest.fail(f"no ms-swift in {SWIFT_BIN}: build it with `bash tests/conformance/build_swift_venv.sh`")
    root = tmp_path_factory.mktemp("swift")
    tiny.save_pretrained(str(root / "model"))
    rows = root / "rows.jsonl"
    prepare = subprocess.run(
        [str(SWIFT_BIN / "python"), "-m", "cac_align.integrations.ms_swift", "prepare", "recipes/cac/stage3_grpo_tiny.yaml", str(rows),
         f"annotations={cac_data}", f"model={root / 'model'}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert prepare.returncode == 0, prepare.stderr[-3000:]
    probe = root / "probe.jsonl"
    env = {**os.environ, "BIN": str(SWIFT_BIN), "MODEL": str(root / "model"), "DATASET": str(rows), "OUT": str(root / "out"),
           "EXTRA_PLUGINS": str(REPO_ROOT / "tests" / "conformance" / "swift_probe.py"), "CAC_SWIFT_PROBE": str(probe)}
    run = subprocess.run(["bash", "recipes/cac/stage3_swift_tiny.sh"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    events = [json.loads(line) for line in probe.read_text().splitlines()]
    return {"root": root, "rows": [json.loads(line) for line in rows.read_text().splitlines()], "events": events, "log": run.stdout + run.stderr}


class Replay(BackendBase):
    """Answers each turn with the text ms-swift's rollout produced, and records the requests
    ``CaCScorer`` builds: it stands for the model, so the conversation is ``cac-align score``'s."""

    def __init__(self, answers: list[str]):
        self.answers = list(answers)
        self.requests: list = []

    def generate(self, requests, max_new_tokens=0, temperature=0.0, top_p=1.0, seed=None):  # noqa: ANN001, ANN201
        self.requests += list(requests)
        return [Completion(self.answers.pop(0)) for _ in requests]

    def choice_probs(self, requests, prefixes, choices):  # noqa: ANN001, ANN201
        return np.full((len(requests), len(choices)), 0.5)


def _cac(row: dict) -> dict:
    return json.loads(row["cac"])


def _ours(sample: dict, record: AnnotationRecord, processor) -> dict:
    """What ``cac-align score`` builds for this sample's video and answers, as token ids."""
    tokenizer = processor.tokenizer
    answers = [tokenizer.decode(ids, skip_special_tokens=True) for ids in sample["response_token_ids"]]
    backend = Replay(answers)
    scorer = CaCScorer(backend, CaCOptions(max_frames_turn1=8, max_frames_turn2=8, prompt_style="full", size_multiple=32))
    result = scorer.score([record.video], prompts=[record.prompt])[0]
    prompts = [processor_inputs(processor, [render_chat(processor, r)], [r])["input_ids"][0].tolist() for r in backend.requests]
    return {"prompts": prompts, "answers": answers, "result": result, "requests": backend.requests}


def _samples(swift_run) -> list[dict]:
    return [e for e in swift_run["events"] if e["kind"] == "encoded"]


def _record(swift_run, sample: dict) -> AnnotationRecord:
    for row in swift_run["rows"]:
        if row["videos"][0] == sample["videos"][0]:
            return AnnotationRecord.from_dict(_cac(row)["record"])
    raise AssertionError(f"no row for {sample['videos'][0]}")


def test_two_grpo_steps_ran_through_the_plugin_with_both_kinds_of_rollout(swift_run):
    steps = [json.loads(line) for line in next((swift_run["root"] / "out").glob("v*/logging.jsonl")).read_text().splitlines()]
    assert [s["global_step/max_steps"] for s in steps if "loss" in s] == ["1/2", "2/2"]
    samples = _samples(swift_run)
    turns = [len(s["response_token_ids"]) for s in samples]
    assert len(samples) == 8 and 1 in turns and 2 in turns  # 2 steps x 2 videos x G 2; some rollouts reached turn 2
    scripted = [e for e in swift_run["events"] if e["kind"] == "scripted"]
    assert 0 < sum(e["turn"] == 1 for e in scripted) < sum(t >= 1 for t in turns)  # the model's own answers are trained on too


def test_conversations_are_what_cac_align_score_builds(swift_run, tiny):
    processor = tiny.processor
    for sample in _samples(swift_run):
        ours = _ours(sample, _record(swift_run, sample), processor)
        ids, answers = sample["input_ids"], sample["response_token_ids"]
        last = ours["prompts"][-1]  # the final turn's prompt: turn 1's, or turn 1 + its answer + turn 2's
        assert len(ours["prompts"]) == len(answers)  # our scorer asked turn 2 exactly when ms-swift's scheduler did
        assert ids[: len(last)] == last
        assert ids[len(last): len(last) + len(answers[-1])] == answers[-1]  # then the sampled ids, as sampled
        if len(answers) == 2:  # the turn-1 answer inside our turn-2 prompt is the sampled one
            first = ours["prompts"][0]
            assert last[len(first): len(first) + len(answers[0])] == answers[0]


def test_each_video_has_its_own_timestamps(swift_run, tiny):
    tokenizer = tiny.processor.tokenizer
    two_turn = [s for s in _samples(swift_run) if len(s["response_token_ids"]) == 2]
    assert two_turn
    for sample in two_turn:
        record = _record(swift_run, sample)
        video = load_video(record.video)
        scan = sample_capped(video, 4.0, 8, None, 32)
        window = sample["rollout_infos"]["cac_window_s"]
        clip = sample_capped(video.crop(*window), 8.0, 8, None, 32)
        text = tokenizer.decode(sample["input_ids"])
        # Qwen3-VL stamps each pair of frames with the mean of their source times, to 0.1 s
        def stamps(v):
            t = np.asarray(v.timestamps, dtype=float)
            t = np.concatenate([t, t[-1:]]) if len(t) % 2 else t
            return [f"{x:.1f}" for x in (t[0::2] + t[1::2]) / 2]
        assert STAMP.findall(text) == stamps(scan) + stamps(clip)
        assert scan.fps == 4.0 and clip.fps == 8.0 and clip.timestamps[0] >= window[0] - 1e-9
        assert sample["video_grid_thw"] == [[(scan.num_frames + 1) // 2, 4, 6], [(clip.num_frames + 1) // 2, 4, 6]]


def test_rewards_equal_ours(swift_run, tiny):
    tokenizer = tiny.processor.tokenizer
    rewards = {e["request_id"]: e["rewards"][0] for e in swift_run["events"] if e["kind"] == "reward"}
    checked = set()
    for sample in _samples(swift_run):
        record = _record(swift_run, sample)
        video = load_video(record.video)
        scan = sample_capped(video, 4.0, 8, None, 32)
        texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in sample["response_token_ids"]]
        first = parse_judgment(texts[0], 1, fps=scan.fps, num_frames=scan.num_frames)
        second, clip_times = None, None
        if len(texts) == 2:
            clip = sample_capped(video.crop(*sample["rollout_infos"]["cac_window_s"]), 8.0, 8, None, 32)
            second, clip_times = parse_judgment(texts[1], 2, fps=clip.fps, num_frames=clip.num_frames), clip.timestamps
        ours = cac_reward(first, second, record, (1.0, 2.0, 2.0, 2.0, 5.0), scan_fps=scan.fps, scan_frames=scan.num_frames, clip_times=clip_times)
        assert rewards[sample["request_id"]] == pytest.approx(ours.total, abs=1e-6)
        checked.add(round(ours.total, 6))
    assert len(checked) >= 3  # not one value for every rollout


def test_only_the_answers_carry_loss(swift_run, tiny):
    processor = tiny.processor
    for sample in _samples(swift_run):
        ours = _ours(sample, _record(swift_run, sample), processor)
        labels, ids, answers = np.array(sample["labels"]), np.array(sample["input_ids"]), sample["response_token_ids"]
        first = len(ours["prompts"][0])
        trained = np.zeros(len(ids), bool)
        trained[first: first + len(answers[0])] = True  # turn 1's answer
        if len(answers) == 2:
            second = len(ours["prompts"][1])
            trained[second: second + len(answers[1])] = True  # turn 2's answer
            assert (labels[first + len(answers[0]): second] == -100).all()  # turn 2's user turn: the clip, its question
        assert (labels[trained] == ids[trained]).all() and (labels[~trained] == -100).all()


def test_trainable_weights_changed(swift_run, tiny):
    checkpoint = next((swift_run["root"] / "out").glob("v*/checkpoint-2"))
    after = load_file(str(checkpoint / "model.safetensors"))
    before = load_file(str(swift_run["root"] / "model" / "model.safetensors"))
    assert set(after) == set(before)
    changed = {name for name in before if not np.array_equal(before[name], after[name])}
    assert "lm_head.weight" in changed
    assert any(".visual." in name for name in changed) and any(".language_model." in name for name in changed)
    assert len(changed) >= 0.5 * len(before), sorted(set(before) - changed)
