"""A judge on one server against two replicas behind vllm-router, under each routing policy.

    python benchmarks/judge/served_fleet.py --python .venv-vllm/bin/python            # CPU: cac-demo, 2 replicas
    python benchmarks/judge/served_fleet.py --python /path/to/vllm-venv/bin/python --replicas 2 --devices 0 0   # one GPU

Starts ``--replicas`` vLLM servers of cac-demo once (``cac-align serve``'s own code,
:func:`cac_align.integrations.vllm.serving.started_fleet` with ``router: none``), then for each
arm empties every replica's prefix cache (``POST /reset_prefix_cache``: the servers run with
``VLLM_SERVER_DEV_MODE=1``, which vLLM needs for it), starts vllm-router with the arm's policy in
front of them (or, for ``one_server``, talks to replica 0 alone), and scores the README main job's
16 videos through it (``recipes/score/cac_demo_vllm.yaml``). Arms:

- ``one_server``: replica 0 alone, no router;
- ``round_robin``, ``cache_aware``: the router's load-spreading policies, our session key sent
  (they ignore it);
- ``consistent_hash_no_key``: consistent hashing with ``model.session_header: null`` (what the
  client sent before the key: every request hashes alike);
- ``consistent_hash``: consistent hashing on our ``X-Session-ID`` (what ``cac-align serve
  replicas=N`` starts).

Per arm: wall time of the scoring (videos per second), requests and prompt tokens each replica
computed (its own ``/metrics``: prompt tokens less those read from its prefix cache), computed
tokens per video and over the turns' own prompt tokens, and whether the 16 verdicts equal the
``one_server`` arm's. Not a test; the figures go to benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARMS = ("one_server", "round_robin", "cache_aware", "consistent_hash_no_key", "consistent_hash")



def counters(root: str) -> dict[str, float]:
    from cac_align.vlm.openai import server_counters

    found = server_counters(root + "/v1")
    if found is None:
        raise RuntimeError(f"no vLLM counters at {root}/metrics")
    return found


def reset_caches(roots: list[str]) -> None:
    import requests

    for root in roots:
        answer = requests.post(root + "/reset_prefix_cache", timeout=30)
        if answer.status_code != 200:
            raise RuntimeError(f"{root}/reset_prefix_cache answered {answer.status_code} (VLLM_SERVER_DEV_MODE=1 needed)")


def score(url: str, out: Path, session_header: bool) -> float:
    from cac_align.cli import main

    shutil.rmtree(out, ignore_errors=True)
    extra = [] if session_header else ["reward.model.session_header=null"]
    start = time.perf_counter()
    code = main(["score", "--config", str(REPO / "recipes/score/cac_demo_vllm.yaml"), f"out_dir={out}", f"reward.model.base_url={url}", *extra])
    if code != 0:
        raise RuntimeError(f"score exited {code}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", required=True, help="the vLLM environment's interpreter")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--devices", nargs="*", default=None, help="CUDA_VISIBLE_DEVICES per replica (GPU: e.g. 0 0 for two on one)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--out", default="outputs/served_fleet")
    parser.add_argument("--json", default=None)
    parser.add_argument("--extra", default="", help='more vLLM flags, one string: --extra="--gpu-memory-utilization 0.4"')
    args = parser.parse_args()

    from cac_align.integrations.vllm.serving import ROUTER_ARGS, find_router, free_ports, started_fleet, stop_process
    from cac_align.jobs import load_recipe

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_ports(args.replicas + 2)  # the replicas from port on, each arm's router after them
    _, config = load_recipe(REPO / "recipes/serve/cac_demo_fleet.yaml",
                            [f"python={args.python}", f"port={port}", f"replicas={args.replicas}", "router=none"])
    env = {**config.env, "VLLM_SERVER_DEV_MODE": "1"}
    config = replace(config, env=env, devices=args.devices, extra_args=list(config.extra_args) + args.extra.split())
    router_bin = find_router(None)
    results: dict[str, dict] = {}
    with started_fleet(config, log_dir=str(out)) as fleet:
        roots = [u[: -len("/v1")] for u in fleet.replica_urls]
        print(f"{args.replicas} replicas up: {roots}", flush=True)
        for arm in args.arms:
            reset_caches(roots)
            before = [counters(r) for r in roots]
            router = None
            if arm == "one_server":
                url = fleet.replica_urls[0]
            else:
                policy = "consistent_hash" if arm.startswith("consistent_hash") else arm
                router_port = port + args.replicas + 1
                command = [router_bin, "--host", "127.0.0.1", "--port", str(router_port), "--worker-urls", *roots, "--policy", policy, *ROUTER_ARGS]
                router = subprocess.Popen(command, stdout=open(out / f"router_{arm}.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)  # noqa: SIM115
                url = f"http://127.0.0.1:{router_port}/v1"
                from cac_align.integrations.vllm.serving import answers

                deadline = time.monotonic() + 120
                while not answers(url):
                    if router.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"vllm-router ({arm}) did not come up: see {out / f'router_{arm}.log'}")
                    time.sleep(0.5)
            try:
                seconds = score(url, out / arm, session_header=arm != "consistent_hash_no_key")
            finally:
                if router is not None:
                    stop_process(router)
            after = [counters(r) for r in roots]
            rows = [json.loads(line) for line in (out / arm / "results.jsonl").read_text().splitlines()]
            turns = sum(r["details"]["turn1"]["prompt_tokens"] + ((r["details"].get("turn2") or {}).get("prompt_tokens") or 0) for r in rows)
            per = [{k: int(a[k] - b[k]) for k in ("requests", "prompt_tokens", "cached_prompt_tokens")} for a, b in zip(after, before)]
            computed = sum(p["prompt_tokens"] - p["cached_prompt_tokens"] for p in per)
            results[arm] = {
                "seconds": seconds, "videos_per_s": len(rows) / seconds, "valid": sum(r["valid"] for r in rows),
                "requests_per_replica": [p["requests"] for p in per], "computed_per_replica": [p["prompt_tokens"] - p["cached_prompt_tokens"] for p in per],
                "computed_per_video": computed / len(rows), "computed_over_turn_prompts": computed / turns,
                "verdicts": [r["status"] for r in rows],
            }
            print(f"{arm:24s} {results[arm]['videos_per_s']:.3f} videos/s  requests/replica {results[arm]['requests_per_replica']}  "
                  f"computed/video {results[arm]['computed_per_video']:.1f}  computed/turn prompts {results[arm]['computed_over_turn_prompts']:.2f}x  "
                  f"valid {results[arm]['valid']}/16", flush=True)
    reference = results.get("one_server", {}).get("verdicts")
    print("\narm                      videos/s   requests per replica   computed tokens/video   computed / turn prompts   verdicts = one server")
    for arm, r in results.items():
        same = "-" if reference is None else ("yes" if r["verdicts"] == reference else "NO")
        print(f"{arm:24s} {r['videos_per_s']:8.3f}   {str(r['requests_per_replica']):20s}   {r['computed_per_video']:21.1f}   "
              f"{r['computed_over_turn_prompts']:22.2f}x   {same}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
