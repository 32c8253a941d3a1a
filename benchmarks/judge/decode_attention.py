"""One decode step's attention, stock vs ours, compiled: bytes the step's ops read and write, KV
copies made, and time, in one run.

    python benchmarks/judge/decode_attention.py                      # 32 query heads / 8 KV heads, 4k cache, batch 8, bf16, CPU
    python benchmarks/judge/decode_attention.py --device cuda        # the same on a GPU (gpu_quick.sh runs it at the 8B's batch 32)
    python benchmarks/judge/decode_attention.py --check              # tiny sizes, seconds: the path only

"Stock" is transformers' own ``sdpa_attention_forward`` and "ours" is
``cac_align.vlm.grouped_decode.grouped_decode_attention``, each called as a layer of a model on a
static cache calls it at a decode step: a one-token query (B, Hq, 1, D), the layer's whole cache
(B, Hkv, L, D) as ``StaticLayer.update`` returns it, and the 4-D boolean mask (B, 1, 1, L) that
transformers 5.24 builds for a compiled static step (left padding masked, the positions not yet
written masked). Both are compiled with torch.compile (inductor, static shapes), as transformers
compiles the decode step; under compile the stock function takes ``repeat_kv``.

**Bytes** are counted on the ATen graph that torch.compile hands inductor (AOTAutograd's
forward graph, captured by a backend that records it; shapes and strides from its fake tensors):
an op that returns a view of its input (``expand``, ``view``, ``transpose``, ``_unsafe_view``)
reads and writes nothing; any other op reads each distinct element of its tensor inputs once (an expanded input's
broadcast dimensions, stride 0, count once) and writes its output. That is the least traffic the
graph's kernels can make (a fused kernel may make less; it cannot avoid reading the cache, and a
copy it materialises it must write and read back). A **KV copy** is an op whose output holds the
cache's length and head size for more rows than batch x KV heads. **Time** is the compiled
function's wall clock (CUDA events on a GPU), stock and ours interleaved, the median of the
repeats; on a shared 2-core CPU it is noisy, which is why the byte count is the headline.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path


def say(*parts) -> None:
    print(*parts, flush=True)


class _Layer:
    """What the attention functions read off their module: the group size (stock) and causality."""

    def __init__(self, groups: int):
        self.num_key_value_groups = groups
        self.is_causal = True
        self.training = False


def _inputs(batch: int, heads: int, kv_heads: int, length: int, dim: int, dtype, device, filled: float = 0.75):
    """A decode step's attention inputs: q as a layer makes it (a transposed view), the cache, the mask."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)
    query = torch.randn(batch, 1, heads, dim, generator=g).to(device, dtype).transpose(1, 2)  # (B, Hq, 1, D)
    key = torch.randn(batch, kv_heads, length, dim, generator=g).to(device, dtype)
    value = torch.randn(batch, kv_heads, length, dim, generator=g).to(device, dtype)
    written = int(length * filled)  # positions written so far; the rest of the static cache is empty
    pads = torch.randint(0, max(1, written // 4), (batch,), generator=g)  # left padding per row
    positions = torch.arange(length)
    mask = (positions[None] >= pads[:, None]) & (positions[None] < written)
    return query, key, value, mask[:, None, None, :].to(device)


def _distinct_bytes(value) -> int:
    """Bytes of the distinct elements a tensor addresses (broadcast, stride-0 dimensions once)."""
    return math.prod(s for s, st in zip(value.shape, value.stride()) if st != 0) * value.element_size()


def _is_view(target) -> bool:
    """An op that returns a view of an input (its schema says so), or ``_unsafe_view`` (reshape's
    view of a fresh tensor, left unannotated), or a tuple's ``getitem``: no bytes of its own."""
    import operator

    import torch

    if target is operator.getitem or target is torch.ops.aten._unsafe_view.default:
        return True
    schema = getattr(target, "_schema", None)
    return schema is not None and any(r.alias_info is not None for r in schema.returns)


def count_graph(graph_module, kv_shape) -> dict:
    """Bytes read and written and KV copies made by the ops of an ATen graph (module docstring)."""
    import torch

    batch, kv_heads, length, dim = kv_shape
    read = written = copies = 0
    copy_bytes = 0
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or _is_view(node.target):
            continue
        inputs = [a.meta["val"] for a in node.all_input_nodes if isinstance(a.meta.get("val"), torch.Tensor)]
        outputs = node.meta.get("val")
        outputs = [o for o in (outputs if isinstance(outputs, (tuple, list)) else [outputs]) if isinstance(o, torch.Tensor)]
        read += sum(_distinct_bytes(t) for t in inputs)
        written += sum(o.numel() * o.element_size() for o in outputs)
        for o in outputs:
            if o.dim() >= 4 and tuple(o.shape[-2:]) == (length, dim) and math.prod(o.shape[:-2]) > batch * kv_heads:
                copies += 1
                copy_bytes += o.numel() * o.element_size()
    return {"bytes_read": read, "bytes_written": written, "kv_copies": copies, "kv_copy_bytes": copy_bytes}


def aten_graph(fn, args):
    """The forward ATen graph torch.compile makes of ``fn(*args)`` (what inductor would get)."""
    import torch
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def keep(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=aot_autograd(fw_compiler=keep), dynamic=False, fullgraph=True)
    with torch.no_grad():
        compiled(*args)
    if len(graphs) != 1:
        raise RuntimeError(f"expected one forward graph, got {len(graphs)}")
    return graphs[0]


def measure(batch: int, heads: int, kv_heads: int, length: int, dim: int, dtype_name: str, device: str, repeats: int, backend: str = "inductor") -> dict:
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from cac_align.vlm.grouped_decode import grouped_decode_attention

    dtype = getattr(torch, dtype_name)
    layer = _Layer(heads // kv_heads)
    query, key, value, mask = _inputs(batch, heads, kv_heads, length, dim, dtype, device)
    scale = dim**-0.5

    def stock(q, k, v, m):
        return sdpa_attention_forward(layer, q, k, v, m, scaling=scale)[0]

    def ours(q, k, v, m):
        return grouped_decode_attention(layer, q, k, v, m, scaling=scale)[0]

    functions = {"stock": stock, "ours": ours}
    args = (query, key, value, mask)
    kv_bytes = 2 * key.numel() * key.element_size()
    result = {"backend": backend, "batch": batch, "heads": heads, "kv_heads": kv_heads, "cache": length, "head_dim": dim, "dtype": dtype_name,
              "device": str(device), "kv_bytes": kv_bytes, "rows": {}}
    say(f"config: batch {batch}, {heads} query heads / {kv_heads} KV heads, cache {length}, head_dim {dim}, {dtype_name}, {device}: "
        f"the layer's K+V cache is {kv_bytes / 2**20:.1f} MiB")
    for name, fn in functions.items():
        counts = count_graph(aten_graph(fn, args), tuple(key.shape))
        result["rows"][name] = counts
        say(f"  {name:5s} ATen graph: reads {counts['bytes_read'] / 2**20:9.1f} MiB, writes {counts['bytes_written'] / 2**20:9.1f} MiB, "
            f"{counts['kv_copies']} KV copies ({counts['kv_copy_bytes'] / 2**20:.1f} MiB)")
    # time: inductor, as transformers compiles the decode step; the two interleaved
    torch._dynamo.reset()
    compiled = {name: torch.compile(fn, backend=backend, dynamic=False, fullgraph=True) for name, fn in functions.items()}
    outputs = {}
    with torch.no_grad():
        for name, fn in compiled.items():
            start = time.perf_counter()
            outputs[name] = fn(*args)
            _sync(device)
            say(f"  {name:5s} compiled ({backend}) in {time.perf_counter() - start:.1f} s")
        error = (outputs["ours"].float() - outputs["stock"].float()).abs().max().item()
        result["max_abs_difference"] = error
        say(f"  outputs: max |ours - stock| = {error:.2e}")
        times: dict[str, list[float]] = {name: [] for name in compiled}
        for _ in range(repeats):
            for name, fn in compiled.items():
                times[name].append(_timed(fn, args, device))
    for name in compiled:
        result["rows"][name]["ms_median"] = 1000 * statistics.median(times[name])
        result["rows"][name]["ms_all"] = [round(1000 * t, 3) for t in times[name]]
    s, o = result["rows"]["stock"], result["rows"]["ours"]
    result["read_ratio"] = s["bytes_read"] / o["bytes_read"]
    result["moved_ratio"] = (s["bytes_read"] + s["bytes_written"]) / (o["bytes_read"] + o["bytes_written"])
    result["time_ratio"] = s["ms_median"] / o["ms_median"]
    say(f"  time (median of {repeats}, interleaved): stock {s['ms_median']:.2f} ms, ours {o['ms_median']:.2f} ms")
    say(f"  stock / ours: bytes read {result['read_ratio']:.2f}x, bytes read + written {result['moved_ratio']:.2f}x, "
        f"time {result['time_ratio']:.2f}x")
    say("RESULT " + json.dumps({k: v for k, v in result.items() if k != "rows"} | {name: {k: v for k, v in row.items() if k != "ms_all"} for name, row in result["rows"].items()}))
    return result


def _sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, args, device) -> float:
    import torch

    if str(device).startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000
    start_s = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--cache", type=int, default=4096, help="the static cache's length (positions)")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend for the timing (aot_eager: no C++/Triton compile)")
    parser.add_argument("--check", action="store_true", help="tiny sizes, 3 repeats, aot_eager: the path, in seconds")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.check:
        args.batch, args.heads, args.kv_heads, args.cache, args.head_dim, args.repeats, args.backend = 2, 8, 2, 256, 64, 3, "aot_eager"
    result = measure(args.batch, args.heads, args.kv_heads, args.cache, args.head_dim, args.dtype, args.device, args.repeats, args.backend)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
