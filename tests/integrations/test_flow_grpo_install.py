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

import numpy as np
import pytest
import torch

from cac_align.integrations import flow_grpo as drop_in
from cac_align.rewards import RewardError
from cac_align.rewards.base import BatchReward, RewardBase
from cac_align.vlm.backend import BackendBase
from conftest import REPO_ROOT, forget_modules

CHECKOUT = REPO_ROOT / "tests" / "fixtures" / "flow_grpo_checkout"
BRIGHTNESS = {"cac": {"name": "brightness", "source_fps": 16.0}}  # the rate their arrays were written at
NAN = float("nan")
T = 3  # timesteps per sample in their (N, T) reward rows


def _forget_their_modules() -> None:
    forget_modules("flow_grpo")


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
    tracker = stat_tracking.PerPromptStatTracker(False)  # built at set-up, before any reward call
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
    # the stop names the reasons the reward calls gave (the tracker itself sees only NaN)
    with pytest.raises(RewardError, match=r"none of the 6 samples of this step has a valid reward.*cac: 3 failed: sample 0: .*float frames contain NaN"):
        trainer_step(rewards_module, stat_tracking, {"cac": 1.0}, [[([NAN] * 3, ["A"] * 3), ([NAN] * 3, ["B"] * 3)]])


def test_names_resolve_after_install_and_theirs_still_work(theirs):
    rewards_module, stat_tracking = theirs
    original = rewards_module.multi_score
    with pytest.raises(KeyError):
        original("cpu", {"cac": 1.0})  # their table is local: our names do not resolve by themselves
    drop_in.install(rewards_module, stat_tracking, sections=BRIGHTNESS)
    drop_in.install(rewards_module, stat_tracking)  # twice is harmless
    stat_tracking.PerPromptStatTracker()  # per-prompt tracking on, as in their trainer
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


class Exploding(RewardBase):
    """A reward whose model call crashes (say, a CUDA error inside the model)."""

    name = "exploding"

    def __call__(self, videos, prompts=None, metadata=None):
        raise RuntimeError("device-side assert triggered")


def test_a_crashing_call_is_invalid_but_caller_errors_raise(theirs, caplog):
    rewards_module, stat_tracking = theirs
    drop_in.install(rewards_module, stat_tracking, sections={"cac": {"name": "test_flow_grpo_install:Exploding"}})
    stat_tracking.PerPromptStatTracker()  # per-prompt tracking on, as in their trainer
    fn = rewards_module.multi_score("cpu", {"cac": 1.0})
    scores, info = fn(_videos([0.2, 0.4]), ["a", "b"], [{"fps": 16}, {"fps": 16}])  # their rows carry the rate
    assert np.isnan(scores["avg"]).all() and scores["invalid"].tolist() == [1.0, 1.0]
    assert info["cac"]["failures"] == {"backend": 2} and "device-side assert" in info["cac"]["errors"][0]
    assert "failed on a call of 2 samples" in caplog.text
    with pytest.raises(ValueError, match="got 2 videos but 3 prompts"):
        fn(_videos([0.2, 0.4]), ["a", "b", "c"], None)


class MismatchedBackend(BackendBase):
    """A backend whose model call fails the way transformers does when a processor and a model
    disagree: a ValueError raised inside the model, after the call itself was checked."""

    def generate(self, requests, max_new_tokens=1024, temperature=0.0, top_p=1.0, seed=None):
        raise ValueError("Video features and video tokens do not match: tokens: 64, features 32")

    def choice_probs(self, requests, prefixes, choices):
        raise TypeError("forward() got an unexpected keyword argument 'second_per_grid_ts'")


def unified_reward_on_a_mismatched_model(scoring: str = "text"):
    from cac_align.rewards.unified import UnifiedReward

    return UnifiedReward(MismatchedBackend(), version="2.0", scoring=scoring, num_frames=4)


@pytest.mark.parametrize("scoring, error", [("text", "ValueError: Video features"), ("probs", "TypeError: forward()")])
def test_a_value_or_type_error_inside_a_model_is_invalid_not_raised(theirs, scoring, error):
    rewards_module, stat_tracking = theirs
    factory = "test_flow_grpo_install:unified_reward_on_a_mismatched_model"
    drop_in.install(rewards_module, stat_tracking, sections={"unified_reward": {"name": factory, "scoring": scoring}})
    stat_tracking.PerPromptStatTracker()  # per-prompt tracking on, as in their trainer
    fn = rewards_module.multi_score("cpu", {"unified_reward": 1.0})
    scores, info = fn(_videos([0.2, 0.4, 0.6]), ["a", "b", "c"], {"fps": 24}, only_strict=True)  # one mapping: the call's rate
    assert np.isnan(scores["avg"]).all() and scores["invalid"].tolist() == [1.0, 1.0, 1.0]
    assert info["unified_reward"]["failures"] == {"backend": 3}
    assert all(e.startswith(error) for e in info["unified_reward"]["errors"].values())
    # the call's own errors still raise, before any model runs
    with pytest.raises(ValueError, match="got 3 videos but 2 prompts"):
        fn(_videos([0.2, 0.4, 0.6]), ["a", "b"], None)
    with pytest.raises(ValueError, match="got 3 videos but 1 metadata entries"):
        fn(_videos([0.2, 0.4, 0.6]), ["a", "b", "c"], [{}])


def test_a_filled_sample_keeps_its_invalid_flag(theirs):
    # Without install, invalid='group_mean' fills a sample from its prompt's valid samples; the
    # score dict's "invalid" still says it was not scored (their reward_invalid counts it).
    rewards_module, _ = theirs
    drop_in.configure(BRIGHTNESS, invalid="group_mean")
    fn = drop_in.multi_score("cpu", {"cac": 1.0})
    scores, info = fn(_videos([0.2, NAN, 0.6]), ["a", "a", "a"], [{}, {}, {}])
    assert scores["cac"].tolist() == pytest.approx([0.2, 0.4, 0.6])  # the NaN one filled with (0.2 + 0.6) / 2
    assert scores["invalid"].tolist() == [0.0, 1.0, 0.0] and info["cac"]["filled_indices"] == [1]


def test_per_prompt_tracking_off_warns_then_refuses_nan(theirs, caplog):
    rewards_module, stat_tracking = theirs
    drop_in.install(rewards_module, stat_tracking, sections=BRIGHTNESS)
    fn = rewards_module.multi_score("cpu", {"cac": 1.0})
    # no PerPromptStatTracker built in this process: their script runs with tracking off
    with pytest.warns(UserWarning, match="per-prompt stat tracking is off"):
        scores, _ = fn(_videos([0.2, 0.4]), ["a", "b"], [{}, {}], only_strict=True)
    assert scores["avg"].tolist() == pytest.approx([0.2, 0.4])  # all valid: their global advantages work
    # eval calls (only_strict=False) train nothing: NaN is reported, not refused
    scores, _ = fn(_videos([0.2, NAN]), ["a", "b"], [{}, {}], only_strict=False)
    assert np.isnan(scores["avg"][1])
    # a training call with an invalid sample would make every advantage NaN: refused
    with pytest.raises(RewardError, match=r"per-prompt stat tracking is off.*could not be scored \(cac: 1 failed: sample 1: .*NaN or inf\)"):
        fn(_videos([0.2, NAN]), ["a", "b"], [{}, {}], only_strict=True)
    # with a tracker built (tracking on), the same call gives NaN for the invalid sample
    stat_tracking.PerPromptStatTracker(False)
    scores, _ = fn(_videos([0.2, NAN]), ["a", "b"], [{}, {}], only_strict=True)
    assert scores["invalid"].tolist() == [0.0, 1.0]


def old_tracker(current: type) -> type:
    """Their tracker with the signature it had before GARDO: ``update(prompts, rewards, type='grpo')``."""

    class OldTracker:
        def __init__(self, global_std=False):
            self.tracker = current(global_std)

        def update(self, prompts, rewards, type="grpo"):  # noqa: A002 - their name
            return self.tracker.update(prompts, rewards, None, type)

    return OldTracker


def _call_forms(new_signature: bool, prompts, rewards, dists):
    """Every way their trainers (and a user) call update, for one signature."""
    forms = [
        ((prompts, rewards), {}),
        ((prompts,), {"rewards": rewards}),
        ((), {"prompts": prompts, "rewards": rewards}),
    ]
    kinds = ("grpo", "rwr", "sft", "dpo") if np.ndim(rewards) == 1 else ("grpo", "rwr", "sft")  # dpo takes (N,) rows
    for kind in kinds:
        forms.append(((prompts, rewards), {"type": kind}))
        forms.append(((prompts, rewards, None, kind) if new_signature else (prompts, rewards, kind), {}))
    if new_signature:
        forms.append(((prompts, rewards, dists), {}))  # dists given, type grpo: dists unused
    if new_signature and np.ndim(rewards) == 2:  # their gardo takes (N, T) rows only
        forms += [
            ((prompts, rewards, dists, "gardo"), {}),
            ((prompts, rewards), {"dists": dists, "type": "gardo"}),
            ((prompts, rewards, dists), {"type": "gardo"}),
        ]
    return forms


@pytest.mark.parametrize("signature", ["new", "old"])
@pytest.mark.parametrize("global_std", [False, True])
def test_tracker_after_install_equals_theirs_for_every_call_form(theirs, signature, global_std):
    rewards_module, stat_tracking = theirs
    cls = stat_tracking.PerPromptStatTracker if signature == "new" else old_tracker(stat_tracking.PerPromptStatTracker)
    stat_tracking.PerPromptStatTracker = cls  # install patches whatever class their module holds
    prompts = ["a", "b", "a", "c", "b", "a", "c", "b"]
    rng = np.random.default_rng(0)
    rows = [rng.random(8), rng.random((8, T))]  # (N,) rewards, and (N, T) after the KL term
    dists = rng.normal(size=(8, 5))
    expected = []
    for rewards in rows:
        for args, kwargs in _call_forms(signature == "new", prompts, rewards, dists):
            expected.append(cls(global_std).update(*args, **kwargs))
    drop_in.install(rewards_module, stat_tracking, sections=BRIGHTNESS)
    got = []
    for rewards in rows:
        for args, kwargs in _call_forms(signature == "new", prompts, rewards, dists):
            got.append(cls(global_std).update(*args, **kwargs))
    assert hasattr(cls.update, "_cac_align_original")  # the wrapper is what ran
    assert len(got) == len(expected) == (25 if signature == "new" else 20)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)  # exactly theirs, not close to it


def test_the_issue_reproduction_dpo_and_gardo(theirs):
    rewards_module, stat_tracking = theirs
    tracker_cls = stat_tracking.PerPromptStatTracker
    prompts = ["a"] * 3 + ["b"] * 3
    r = np.array([0.1, 0.5, 0.3, 0.9, 0.4, 0.2])
    before = tracker_cls().update(prompts, r, type="dpo")
    assert before.tolist() == [-1, 1, 0, 1, 0, -1]
    drop_in.install(rewards_module, stat_tracking, sections=BRIGHTNESS)
    assert tracker_cls().update(prompts, r, type="dpo").tolist() == [-1, 1, 0, 1, 0, -1]
    # NaN-aware with every argument forwarded: sample 1 invalid. dpo over a's valid [0.1, 0.3]:
    # worst 0.1 -> -1, best 0.3 -> +1; b as before.
    r_bad = r.copy()
    r_bad[1] = NAN
    assert tracker_cls().update(prompts, r_bad, type="dpo").tolist() == [-1, 0, 1, 1, 0, -1]
    # gardo, positional dists: the invalid row's features leave with it. Group a's valid samples
    # 0 and 2 (rewards 0.1, 0.3, mean 0.2) have features e0 and e1: distance 1 - cos = 1 each, so
    # the weight above the mean is 1 / 1 = 1 and below it 1: advantages -0.1 and +0.1. Group b:
    # features e0, e0, e1: nearest distances 0, 0, 1 (mean 1/3), rewards 0.9, 0.4, 0.2 (mean 0.5):
    # 0.9 is above the mean, weight 0 / (1/3) = 0; 0.4 and 0.2 below, weight 1: 0, -0.1, -0.3.
    e0, e1 = [1.0, 0.0], [0.0, 1.0]
    dists = np.array([e0, [5.0, 5.0], e1, e0, e0, e1])
    gardo = tracker_cls().update(prompts, r_bad[:, None], dists, "gardo")  # their gardo takes (N, T) rows
    np.testing.assert_allclose(gardo[:, 0], [-0.1, 0.0, 0.1, 0.0, -0.1, -0.3], atol=1e-12)


TINY_CAC = {"model": {"name": "tiny-random:qwen3_vl", "dtype": "float32"}, "options": {"mode": "no_cot"}}
TINY_UR = {"model": {"name": "tiny-random:qwen2_5_vl", "dtype": "float32"}, "scoring": "probs", "num_frames": 4}
TINY_SECTIONS = {
    "cac": {"name": "cac", **TINY_CAC, "source_fps": 16.0},
    "unified_reward": {"name": "unified_reward", **TINY_UR, "source_fps": 16.0},
    "ur_cac": {"name": "ur_cac", "cac": TINY_CAC, "unified_reward": TINY_UR, "source_fps": 16.0},
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
    stat_tracking.PerPromptStatTracker()  # per-prompt tracking on, as in their trainer
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


@pytest.mark.slow  # ~7 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_launcher_installs_before_their_script_runs(tmp_path):
    checkout = tmp_path / "flow_grpo"
    shutil.copytree(CHECKOUT, checkout)
    (checkout / "rewards.yaml").write_text("cac:\n  name: brightness\n  source_fps: 16\n")
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "cac_align.integrations.flow_grpo", "--rewards", "rewards.yaml",
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
    bad = subprocess.run([sys.executable, "-m", "cac_align.integrations.flow_grpo", "scripts/nope.py"],
                         cwd=checkout, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no such script: scripts/nope.py" in bad.stderr


class FrameRateEcho(BatchReward):
    """Scores each video with the frame rate it was read at (its reward default is Wan-2.1's 16,
    which the drop-in must never fall back on)."""

    name = "frame_rate_echo"
    score_range = (0.0, 100.0)
    needs_prompt = False

    def __init__(self, source_fps: float = 16.0):
        self.source_fps = source_fps

    def score_batch(self, requests):
        return [{"score": video.fps} for video, _ in requests]


def test_the_frame_rate_is_never_guessed(theirs):
    rewards_module, stat_tracking = theirs
    echo = "test_flow_grpo_install:FrameRateEcho"
    # neither their metadata nor the section states a rate: the call is refused in one line naming
    # the key and the common rates, never read at the reward's own default (16)
    drop_in.install(rewards_module, stat_tracking, sections={"cac": {"name": echo}})
    stat_tracking.PerPromptStatTracker()  # per-prompt tracking on, as in their trainer
    fn = rewards_module.multi_score("cpu", {"cac": 1.0})
    with pytest.raises(ValueError, match=r"^flow_grpo cac: no frame rate .*set source_fps in the 'cac' reward section .*"
                                         r"\(Wan-2\.1 16, Wan2\.2 / LTX-2 24\)$") as refused:
        fn(_videos([0.2, 0.4]), ["a", "b"], [{}, {}])
    assert "\n" not in str(refused.value)
    # a rate their rows carry is taken as given, row by row (one mapping: the call's)
    scores, _ = fn(_videos([0.2, 0.4]), ["a", "b"], [{"fps": 24}, {"fps": 30}])
    assert scores["cac"].tolist() == [24.0, 30.0]
    scores, _ = fn(_videos([0.2, 0.4]), ["a", "b"], {"fps": 24})
    assert scores["cac"].tolist() == [24.0, 24.0]
    # an LTX-2 run that sets the section's source_fps gets 24, and a row's own rate still wins
    drop_in.install(rewards_module, stat_tracking, sections={"cac": {"name": "brightness", "source_fps": 24.0},
                                                             "unified_reward": {"name": echo, "source_fps": 24.0}})
    fn = rewards_module.multi_score("cpu", {"unified_reward": 1.0})
    scores, _ = fn(_videos([0.2, 0.4]), ["a", "b"], [{}, {"fps": 16}])
    assert scores["unified_reward"].tolist() == [24.0, 16.0]
    with pytest.raises(ValueError, match=r"must be > 0 .*got 0$"):
        fn(_videos([0.2]), ["a"], [{"fps": 0}])
