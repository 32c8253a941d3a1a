"""cac_align's rewards inside Flow-GRPO's own reward path, through ``install``.

The harness below makes the calls Flow-GRPO's ``scripts/train_wan2_1.py`` makes, on a stand-in
checkout written for these tests (tests/fixtures/flow_grpo_checkout): two ``multi_score``
builds (training and eval), reward calls in a thread pool with each prompt's group split over
calls and processes, every score key turned into a tensor and concatenated, the KL reward
subtracted from "avg" (giving (N, T) rows), a gather over processes, per-prompt advantages
from the (installed) ``PerPromptStatTracker``, and their mask ``advantages.abs().sum(1) != 0``.
The "cac" name is pointed at the model-free ``brightness`` reward, so a sample's reward is its
brightness and NaN frames make it invalid.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from cac_align.rewards import RewardError
from cac_align.rewards import flow_grpo as drop_in

CHECKOUT = Path(__file__).parent / "fixtures" / "flow_grpo_checkout"
BRIGHTNESS = {"cac": {"name": "brightness"}}
NAN = float("nan")
T = 3  # timesteps per sample in their (N, T) reward rows


def _forget_their_modules() -> None:
    for name in [m for m in sys.modules if m == "flow_grpo" or m.startswith("flow_grpo.")]:
        del sys.modules[name]


@pytest.fixture
def theirs(monkeypatch):
    """Their flow_grpo.rewards and flow_grpo.stat_tracking, freshly imported; restored after."""
    _forget_their_modules()
    monkeypatch.syspath_prepend(str(CHECKOUT))
    rewards = importlib.import_module("flow_grpo.rewards")
    stat_tracking = importlib.import_module("flow_grpo.stat_tracking")
    yield rewards, stat_tracking
    drop_in.uninstall(rewards, stat_tracking)
    drop_in.configure()
    drop_in.release_models()
    _forget_their_modules()


def _videos(levels: list[float]) -> torch.Tensor:
    """(B, F, C, H, W) videos in [0, 1], each one flat grey at its level (NaN: broken frames)."""
    return torch.stack([torch.full((4, 3, 8, 8), level) for level in levels])


def trainer_step(rewards_module, stat_tracking, score_dict, processes, kl_reward=0.0):
    """One epoch of their trainer's reward path. ``processes``: per process, per sampling call,
    (levels, prompts). Returns the gathered rewards, the advantages per process and their masks."""
    reward_fn = getattr(rewards_module, "multi_score")("cpu", score_dict)
    getattr(rewards_module, "multi_score")("cpu", score_dict)  # their eval_reward_fn
    executor = ThreadPoolExecutor(max_workers=8)
    per_process, all_prompts = [], []
    for calls in processes:
        samples = []
        for levels, prompts in calls:
            future = executor.submit(reward_fn, _videos(levels), prompts, [{} for _ in prompts], only_strict=True)
            samples.append({"rewards": future, "kl": torch.full((len(prompts), T), 0.5)})
            all_prompts += prompts
        for sample in samples:
            rewards, _ = sample["rewards"].result()
            sample["rewards"] = {key: torch.as_tensor(value).float() for key, value in rewards.items()}
        collated = {key: torch.cat([s["rewards"][key] for s in samples]) for key in samples[0]["rewards"]}
        kl = torch.cat([s["kl"] for s in samples])
        collated["ori_avg"] = collated["avg"]
        collated["avg"] = collated["avg"].unsqueeze(-1) - kl_reward * kl
        per_process.append(collated)
    executor.shutdown()
    gathered = {key: torch.cat([p[key] for p in per_process]).numpy() for key in per_process[0]}
    tracker = stat_tracking.PerPromptStatTracker(False)
    advantages = torch.as_tensor(tracker.update(all_prompts, gathered["avg"]))
    tracker.clear()
    advantages = advantages.reshape(len(processes), -1, advantages.shape[-1])
    masks = [advantages[p].abs().sum(dim=1) != 0 for p in range(len(processes))]
    return gathered, advantages, masks, all_prompts


# Groups A, B, C, each split over calls and over both processes; process 1's first call has no
# valid sample at all. Levels are multiples of 1/255 so brightness reads them back exactly.
STEP = [
    [([0.2, NAN, 0.6], ["A", "A", "B"]), ([0.4, 0.2, 0.0], ["A", "B", "C"])],
    [([NAN, NAN, NAN], ["C", "B", "A"]), ([0.6, 0.8, 0.4], ["A", "B", "C"])],
]


def _group_advantages(values: list[float]) -> np.ndarray:
    """What Flow-GRPO's tracker gives a group: (r - mean) / (population std + 1e-4)."""
    v = np.array(values)
    return (v - v.mean()) / (v.std() + 1e-4)


@pytest.mark.parametrize("kl_reward", [0.0, 0.1])
def test_invalid_samples_never_train(theirs, kl_reward):
    rewards_module, stat_tracking = theirs
    drop_in.install(rewards_module, stat_tracking, sections=BRIGHTNESS)
    gathered, advantages, masks, prompts = trainer_step(rewards_module, stat_tracking, {"cac": 1.0}, STEP, kl_reward)
    adv = advantages.reshape(-1, T).numpy()
    invalid = np.isnan(gathered["ori_avg"])
    assert invalid.tolist() == [False, True, False, False, False, False, True, True, True, False, False, False]
    # the all-invalid call returned NaN scores instead of stopping training, and says so
    assert gathered["invalid"].tolist() == invalid.astype(float).tolist()
    assert gathered["invalid"].mean() == pytest.approx(4 / 12)  # their log: reward_invalid
    # invalid samples: advantage exactly 0 at every timestep, and their mask drops them
    assert (adv[invalid] == 0).all()
    mask = torch.cat(masks).numpy()
    assert not mask[invalid].any() and mask[~invalid].all()
    # valid samples: exactly the advantages of their groups' valid members (hand-worked), as if
    # the invalid samples had never been drawn; the KL term shifts every reward of a timestep
    # equally, so the advantages do not move
    expected = {
        "A": dict(zip([0, 3, 9], _group_advantages([0.2, 0.4, 0.6]))),
        "B": dict(zip([2, 4, 10], _group_advantages([0.6, 0.2, 0.8]))),
        "C": dict(zip([5, 11], _group_advantages([0.0, 0.4]))),
    }
    for group, members in expected.items():
        for i, value in members.items():
            assert prompts[i] == group
            assert adv[i] == pytest.approx([value] * T, rel=1e-4, abs=1e-5)
    assert adv[0, 0] == pytest.approx(-0.2 / (np.sqrt(0.08 / 3) + 1e-4), rel=1e-4)  # A's lowest, by hand


def test_without_install_nan_spreads_to_valid_samples(theirs):
    # What install fixes: with NaN for invalid samples but their own tracker, every member of a
    # group with an invalid sample gets NaN, and their mask (NaN != 0) keeps them for the loss.
    rewards_module, stat_tracking = theirs
    drop_in.configure(BRIGHTNESS)
    rewards_module.multi_score = drop_in.multi_score  # a manual edit of their file, no tracker change
    gathered, advantages, masks, _ = trainer_step(rewards_module, stat_tracking, {"cac": 1.0}, STEP)
    adv = advantages.reshape(-1, T).numpy()
    assert np.isnan(adv[0]).all() and not np.isnan(gathered["ori_avg"][0])  # valid, but NaN advantage
    assert torch.cat(masks).numpy()[0]


def test_a_step_with_no_valid_sample_raises_from_the_tracker(theirs):
    rewards_module, stat_tracking = theirs
    drop_in.install(rewards_module, stat_tracking, sections=BRIGHTNESS)
    with pytest.raises(RewardError, match="none of the 6 samples of this step has a valid reward"):
        trainer_step(rewards_module, stat_tracking, {"cac": 1.0}, [[([NAN] * 3, ["A"] * 3), ([NAN] * 3, ["B"] * 3)]])


def test_names_resolve_after_install_and_theirs_still_work(theirs):
    rewards_module, stat_tracking = theirs
    original = rewards_module.multi_score
    with pytest.raises(KeyError):
        original("cpu", {"cac": 1.0})  # their table is local: our names do not resolve by themselves
    drop_in.install(rewards_module, stat_tracking, sections=BRIGHTNESS)
    drop_in.install(rewards_module, stat_tracking)  # twice is harmless
    assert getattr(rewards_module.multi_score, "_cac_align_original") is original
    # only their names: their own function, untouched
    fn = rewards_module.multi_score("cpu", {"redness": 1.0, "constant": 2.0})
    assert fn.__module__ == "flow_grpo.rewards"
    # ours beside theirs: "avg" is the weighted sum over all names; their keys pass through
    fn = rewards_module.multi_score("cpu", {"cac": 1.0, "redness": 0.5, "constant": 2.0})
    videos = _videos([0.2, 0.4])
    videos[1, :, 0] = 0.0  # the second video has no red
    scores, info = fn(videos, ["a", "b"], [{}, {}], only_strict=True)
    assert set(scores) == {"cac", "redness", "constant", "avg", "invalid"}
    assert scores["cac"].tolist() == pytest.approx([0.2, 0.8 / 3])  # brightness over all channels
    assert scores["avg"].tolist() == pytest.approx([0.2 + 0.5 * 0.2 + 2.0, 0.8 / 3 + 0.5 * 0.0 + 2.0], rel=1e-6)
    assert scores["invalid"].tolist() == [0.0, 0.0] and info["cac"]["valid"] == [True, True]
    drop_in.uninstall(rewards_module, stat_tracking)
    assert rewards_module.multi_score is original
    assert not hasattr(stat_tracking.PerPromptStatTracker.update, "_cac_align_original")


class Exploding:
    """A reward whose model call crashes (say, a CUDA error inside the model)."""

    name = "exploding"

    def __call__(self, videos, prompts=None, metadata=None):
        raise RuntimeError("device-side assert triggered")


def test_a_crashing_call_is_invalid_but_caller_errors_raise(theirs, caplog):
    rewards_module, stat_tracking = theirs
    drop_in.install(rewards_module, stat_tracking, sections={"cac": {"name": "test_flow_grpo_install:Exploding"}})
    fn = rewards_module.multi_score("cpu", {"cac": 1.0})
    scores, info = fn(_videos([0.2, 0.4]), ["a", "b"], [{}, {}])
    assert np.isnan(scores["avg"]).all() and scores["invalid"].tolist() == [1.0, 1.0]
    assert info["cac"]["failures"] == {"backend": 2} and "device-side assert" in info["cac"]["errors"][0]
    assert "failed on a call of 2 samples" in caplog.text
    with pytest.raises(ValueError, match="got 2 videos but 3 prompts"):
        fn(_videos([0.2, 0.4]), ["a", "b", "c"], None)


TINY_CAC = {"model": {"name": "tiny-random:qwen3_vl", "dtype": "float32"}, "options": {"mode": "no_cot"}}
TINY_UR = {"model": {"name": "tiny-random:qwen2_5_vl", "dtype": "float32"}, "scoring": "probs", "num_frames": 4}
TINY_SECTIONS = {
    "cac": {"name": "cac", **TINY_CAC},
    "unified_reward": {"name": "unified_reward", **TINY_UR},
    "ur_cac": {"name": "ur_cac", "cac": TINY_CAC, "unified_reward": TINY_UR},
}


def test_each_model_loads_once_per_process(theirs, monkeypatch):
    from cac_align.vlm.hf import HFBackend

    built = []
    init = HFBackend.__init__

    def counting_init(self, *args, **kwargs):
        built.append(type(args[0]).__name__)
        init(self, *args, **kwargs)

    monkeypatch.setattr(HFBackend, "__init__", counting_init)
    rewards_module, stat_tracking = theirs
    drop_in.install(rewards_module, stat_tracking, sections=TINY_SECTIONS)
    score_dict = {"cac": 0.5, "unified_reward": 0.5, "ur_cac": 1.0}
    with pytest.warns(UserWarning, match=r"different scales \(cac on \[0, 1\], unified_reward on \[1, 4\], ur_cac on \[0, 1\]\)"):
        train_fn = rewards_module.multi_score(torch.device("cpu"), score_dict)
    with pytest.warns(UserWarning, match="different scales"):
        eval_fn = rewards_module.multi_score(torch.device("cpu"), score_dict)
    # two multi_score builds x (cac + unified_reward + ur_cac's two): one load per checkpoint
    assert sorted(built) == ["Qwen2_5_VLForConditionalGeneration", "Qwen3VLForConditionalGeneration"]
    assert len(drop_in.loaded_models()) == 2
    videos = torch.rand(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with ThreadPoolExecutor(max_workers=4) as pool:  # training and eval calls at once share the models safely
        first, second = pool.submit(train_fn, videos, ["a", "a"], [{}, {}]), pool.submit(eval_fn, videos, ["a", "a"], [{}, {}], only_strict=False)
        a, _ = first.result()
        b, _ = second.result()
    assert a["avg"].tolist() == pytest.approx(b["avg"].tolist(), rel=1e-5)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one scale: no warning
        rewards_module.multi_score("cpu", {"ur_cac": 1.0})


def test_launcher_installs_before_their_script_runs(tmp_path):
    checkout = tmp_path / "flow_grpo"
    shutil.copytree(CHECKOUT, checkout)
    (checkout / "rewards.yaml").write_text("cac:\n  name: brightness\n")
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "cac_align.rewards.launch_flow_grpo", "--rewards", "rewards.yaml",
         "scripts/train_toy.py", json.dumps({"cac": 1.0, "redness": 1.0}), str(out)],
        cwd=checkout, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    # levels [0.2, nan, 0.6 | 0.5->127/255, 0.3->76/255, 0.1->26/255]: grey, so redness = brightness
    assert np.isnan(result["avg"][1]) and result["invalid"] == [0, 1, 0, 0, 0, 0]
    assert result["avg"][0] == pytest.approx(0.4, rel=1e-5)
    assert result["advantages"][1] == 0.0
    a = _group_advantages([0.4, 1.2])
    assert result["advantages"][0] == pytest.approx(a[0], rel=1e-4) and result["advantages"][2] == pytest.approx(a[1], rel=1e-4)
    bad = subprocess.run([sys.executable, "-m", "cac_align.rewards.launch_flow_grpo", "scripts/nope.py"],
                         cwd=checkout, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no such script: scripts/nope.py" in bad.stderr
