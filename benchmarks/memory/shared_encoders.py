"""Host memory of a node's trainer processes with the prompt encoder one copy for the node, against
one copy per process (``parallel.share_encoders``, cac_align/gen/shared_weights.py).

    python benchmarks/memory/shared_encoders.py                      # 4 processes, a ~1.4 GB bf16 UMT5 encoder
    python benchmarks/memory/shared_encoders.py --processes 8 --layers 12
    python benchmarks/memory/shared_encoders.py --visit cuda         # one process: the encoder's trips to a GPU

A tiny Wan pipeline whose text encoder is swapped for a random UMT5 encoder of real width (d_model
1536, d_ff 4096, ``--layers`` layers, bf16) is saved to a folder. Then ``--processes`` processes are
launched on this machine's CPU twice (torchrun, gloo), each loading the folder as a sharded trainer
does (``load_generator(layout, ...)`` with ``parallel.shard=fsdp2``), once with ``share_encoders`` at its
default (shared: the encoders live on the CPU) and once ``false``. After every process has encoded a
prompt, each reads its ``/proc/self/smaps_rollup``: PSS (each shared page divided among the processes
that map it, so the processes' PSS add up to what the node holds) and anonymous (private) memory.
Printed: the node's total PSS both ways, its ratio, and per process; a ``RESULT {json}`` line.

``--visit DEVICE`` measures instead what one process's host memory does when the encoder visits
``DEVICE`` (a GPU) to encode and comes back, as a sharded run's encoder does each step: published to
a shared file, it goes to the device, encodes, and comes back by ``MappedTensors.restore`` (the
shared pages), then once more by ``module.to("cpu")`` (as before: a private copy). Anonymous
(private) memory after each, and whether every tensor is the file's again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def build(folder: Path, layers: int, file_dtype: str) -> int:
    """The pipeline with its wide encoder saved to ``folder`` in ``file_dtype``; returns the encoder's
    bytes in bf16 (the run's dtype)."""
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    from cac_align.gen.families.wan import build_tiny_wan_pipeline

    pipe = build_tiny_wan_pipeline(seed=0)
    config = UMT5Config(vocab_size=len(pipe.tokenizer), d_model=1536, d_kv=96, d_ff=4096, num_layers=layers, num_heads=16,
                        relative_attention_num_buckets=32, pad_token_id=pipe.tokenizer.pad_token_id, eos_token_id=pipe.tokenizer.eos_token_id)
    pipe.register_modules(text_encoder=UMT5EncoderModel(config).to(getattr(torch, file_dtype)).eval())
    pipe.save_pretrained(folder)
    return sum(p.numel() * 2 for p in pipe.text_encoder.parameters())


def worker(folder: str, share: str, out: str) -> None:
    """One process: load as a sharded trainer, encode a prompt, report its memory once all have."""
    import torch

    from cac_align.gen.generator import GeneratorConfig
    from cac_align.gen.parallel import ParallelSettings, layout_for, load_generator

    torch.distributed.init_process_group("gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()

    class OnTheCpu:  # what layout_for reads of an Accelerator
        num_processes, process_index, device = world, rank, torch.device("cpu")

    layout = layout_for(OnTheCpu(), ParallelSettings(shard="fsdp2", share_encoders={"default": None, "false": False}[share]))
    config = GeneratorConfig(name=folder, dtype="bfloat16", device="cpu")
    began = time.perf_counter()
    pipe = load_generator(layout, config, torch.device("cpu"))
    load_s = time.perf_counter() - began
    family = config.family
    with torch.no_grad():
        family.encode_prompts(pipe, ["a red ball rolls across a wooden floor"], None, family.guidance(config, guided=False), 32)
    torch.distributed.barrier()  # every process has loaded and read its encoder
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value, *_ = line.split()
        fields[key.rstrip(":")] = int(value) * 1024
    mine = {"rank": rank, "pss": fields["Pss"], "anonymous": fields["Anonymous"], "rss": fields["Rss"], "load_s": load_s}
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, mine)
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def visit(device: str, layers: int) -> None:
    """One process, the encoder's trips to ``device`` and back: the shared pages, then a private copy."""
    import gc

    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    from cac_align.gen.shared_weights import publish

    def anonymous() -> int:
        gc.collect()
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("Anonymous:"):
                return int(line.split()[1]) * 1024
        return 0

    config = UMT5Config(vocab_size=32128, d_model=1536, d_kv=96, d_ff=4096, num_layers=layers, num_heads=16, relative_attention_num_buckets=32)
    encoder = UMT5EncoderModel(config).to(torch.bfloat16).eval()
    size = sum(p.numel() * p.element_size() for p in encoder.parameters())
    ids = torch.randint(0, 32128, (4, 128), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        _, home = publish(encoder, Path(tmp) / "text_encoder.bin")
        base = anonymous()
        rows = {}
        for how in ("restore", "to_cpu"):
            encoder.to(device)
            with torch.no_grad():
                encoder(input_ids=ids.to(device))
            home.restore() if how == "restore" else encoder.to("cpu")
            tensors = [t for _, m in encoder.named_modules() for t in [*m._parameters.values(), *m._buffers.values()] if t is not None]
            rows[how] = {"anonymous_growth": anonymous() - base, "in_file": all(home.holds(t) for t in tensors)}
            print(f"back by {how}: anonymous memory +{rows[how]['anonymous_growth'] / 2**30:.2f} GiB "
                  f"(the encoder: {size / 2**30:.2f} GiB); every tensor the shared file's: {rows[how]['in_file']}", flush=True)
    print("RESULT " + json.dumps({"visit": device, "encoder_bytes": size, **rows}))


def launch(folder: Path, processes: int, share: str, out: Path) -> list[dict]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(port),
               __file__, "--worker", str(folder), share, str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the {share} launch failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--layers", type=int, default=24, help="the UMT5 encoder's layers (24: about 0.68 B parameters, 1.4 GB in bf16)")
    parser.add_argument("--file-dtype", default="float32", choices=("float32", "bfloat16"),
                        help="the encoder's dtype in its files; the run loads it in bf16 (float32: a load that converts)")
    parser.add_argument("--visit", metavar="DEVICE", help="one process: the encoder's trips to DEVICE (a GPU) and back")
    parser.add_argument("--worker", nargs=3, metavar=("FOLDER", "SHARE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    if args.visit:
        visit(args.visit, args.layers)
        return
    gib = 2**30
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "wan_wide_encoder"
        encoder = build(folder, args.layers, args.file_dtype)
        print(f"encoder: {encoder / gib:.2f} GiB in bf16, its files {args.file_dtype}; {args.processes} processes on this node")
        runs = {share: launch(folder, args.processes, share, Path(tmp) / f"{share}.json") for share in ("false", "default")}
    totals = {share: sum(p["pss"] for p in run) for share, run in runs.items()}
    for share, run in runs.items():
        label = "one copy per process (share_encoders: false)" if share == "false" else "one copy for the node (default)"
        per = ", ".join(f"{p['pss'] / gib:.2f}" for p in run)
        anon = ", ".join(f"{p['anonymous'] / gib:.2f}" for p in run)
        print(f"{label}: node PSS {totals[share] / gib:.2f} GiB; per process PSS [{per}] GiB, anonymous [{anon}] GiB; "
              f"load {max(p['load_s'] for p in run):.1f} s")
    saved = totals["false"] - totals["default"]
    print(f"shared / private node PSS: {totals['default'] / totals['false']:.2f}x; saved {saved / gib:.2f} GiB "
          f"({saved / encoder:.2f} x the encoder; at most {args.processes - 1}: a load that maps its file without converting shares its pages already)")
    print("RESULT " + json.dumps({"processes": args.processes, "encoder_bytes": encoder, "file_dtype": args.file_dtype, "node_pss": totals,
                                  "per_process": {k: [p["pss"] for p in v] for k, v in runs.items()},
                                  "anonymous": {k: [p["anonymous"] for p in v] for k, v in runs.items()},
                                  "load_s": {k: max(p["load_s"] for p in v) for k, v in runs.items()}}))


if __name__ == "__main__":
    main()
