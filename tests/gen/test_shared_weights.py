"""One copy per node of the prompt encoders (cac_align/gen/shared_weights.py): the first process publishes
its encoder to a file and points it there; another builds the encoder empty and maps the file. Here in
one process, on a tiny UMT5 encoder (its embedding held under two names, as UMT5-XXL's is); the
two-process load with its page counts is tests/sharded_load_launch.py (test_parallel.py)."""

import os

import pytest
import torch

from cac_align.gen.shared_weights import attach, module_bytes, publish


def _encoder(seed: int = 0, layers: int = 2):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    config = UMT5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=layers, num_heads=4, relative_attention_num_buckets=8)
    return UMT5EncoderModel(config).eval(), config


def _encode(module, ids):
    with torch.no_grad():
        return module(input_ids=ids).last_hidden_state


def _tensors(module):
    return [t for _, owner in module.named_modules() for t in [*owner._parameters.values(), *owner._buffers.values()] if t is not None]


def test_an_empty_encoder_maps_the_published_copy_and_encodes_as_the_original_bit_for_bit(tmp_path):
    from transformers import UMT5EncoderModel

    original, config = _encoder()
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(1))
    want = _encode(original, ids)
    wanted = {name: t.clone() for name, t in original.state_dict().items()}
    layout, home = publish(original, tmp_path / "text_encoder.bin")

    assert (tmp_path / "text_encoder.bin").stat().st_size == layout["bytes"] == module_bytes(original)
    # the embedding is held under two names and written once
    assert layout["aliases"] == {"encoder.embed_tokens.weight": "shared.weight"}
    assert all(home.holds(t) for t in _tensors(original))  # the first process's own copy is gone: its tensors are the file's
    assert torch.equal(_encode(original, ids), want)

    with torch.device("meta"):
        empty = UMT5EncoderModel(config).eval()
    mapped = attach(empty, layout)
    assert not any(t.is_meta for t in _tensors(empty)) and all(mapped.holds(t) for t in _tensors(empty))
    assert empty.shared.weight.data_ptr() == empty.encoder.embed_tokens.weight.data_ptr()
    assert all(torch.equal(t, wanted[name]) and t.dtype == wanted[name].dtype for name, t in empty.state_dict().items())
    assert torch.equal(_encode(empty, ids), want)
    # the two processes' tensors are the same bytes of the file, each mapped by itself
    assert mapped.slots[0][3].data_ptr() != home.slots[0][3].data_ptr()
    assert torch.equal(mapped.slots[0][3], home.slots[0][3])


def test_after_a_visit_elsewhere_the_encoder_returns_to_the_shared_pages(tmp_path):
    original, _ = _encoder()
    _, home = publish(original, tmp_path / "e.bin")
    pointers = [t.data_ptr() for t in _tensors(original)]
    original.to("meta")  # a visit to another device: each tensor a new one there
    assert not any(home.holds(t) for t in _tensors(original))
    home.restore()
    assert [t.data_ptr() for t in _tensors(original)] == pointers and all(home.holds(t) for t in _tensors(original))

    # a module converted since (another dtype) is not the file's any more: it comes back as a copy of its own
    original.to(torch.float64)
    home.restore()
    assert all(t.dtype == torch.float64 and not home.holds(t) for t in _tensors(original) if t.is_floating_point())


def test_another_structure_is_refused_naming_what_differs(tmp_path):
    original, _ = _encoder()
    layout, _ = publish(original, tmp_path / "e.bin")
    deeper, _ = _encoder(layers=3)
    with pytest.raises(ValueError, match=r"not the published module: tensors only here \['encoder.block.2"):
        attach(deeper, layout)
    wider, _ = _encoder()
    wider.shared = torch.nn.Embedding(60, 16)
    wider.encoder.embed_tokens = wider.shared
    with pytest.raises(ValueError, match=r"shared.weight is \(60, 16\) here, \(50, 16\) there"):
        attach(wider, layout)
    with pytest.raises(ValueError, match="meta device cannot be shared"):
        publish(original.to("meta"), tmp_path / "m.bin")


def test_a_copy_left_by_an_ended_process_is_removed_and_a_running_ones_kept(tmp_path):
    import subprocess
    import sys

    from cac_align.gen.parallel import remove_stale_copies

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead, alive = tmp_path / f"cac_align-encoders-{ended.stdout.strip()}-ab_1", tmp_path / f"cac_align-encoders-{os.getpid()}-cd_2"
    other = tmp_path / "cac_align-encoders-notapid"
    for folder in (dead, alive, other):
        folder.mkdir()
        (folder / "text_encoder.bin").write_bytes(b"x")
    assert remove_stale_copies(str(tmp_path)) == [str(dead)]
    assert not dead.exists() and alive.exists() and other.exists()


def test_no_room_for_the_copy_is_one_line_naming_the_setting(tmp_path):
    from cac_align.gen.parallel import _share_folder

    assert _share_folder(1, str(tmp_path)) == str(tmp_path)
    with pytest.raises(OSError, match=r"needs 931322574.6 GiB \(.* GiB free\); set parallel.share_dir to a node-local folder with room"):
        _share_folder(10**18, str(tmp_path))
    with pytest.raises(OSError, match="no such folder"):
        _share_folder(1, str(tmp_path / "absent"))


def _first_tiny_names():
    from cac_align.gen.family import families

    # a family without prompt encoders (Cosmos 3: its transformer embeds the token ids) has none to share
    return [family.tiny_names[0] for family in families() if family.tiny_names and family.encoder_components]


@pytest.mark.slow
@pytest.mark.parametrize("tiny", _first_tiny_names())
def test_every_familys_encoders_build_empty_as_their_folder_loads_them(tiny, tmp_path):
    """What a node's other processes build before they map the first one's copy: each prompt encoder of a
    saved folder, from its config on the meta device, with the loaded encoder's tensors under the same
    names and shapes (so :func:`attach` takes the published layout), and in eval mode. A family whose
    folder is not read this way (none today) would fail here."""
    from cac_align.gen.family import family_of
    from cac_align.gen.generator import GeneratorConfig, build_generator, empty_encoder_modules

    family = family_of(tiny)
    built = family.build_tiny(tiny, seed=0)
    built.save_pretrained(str(tmp_path / "model"))  # diffusers' own (a modular pipeline's takes a str)
    if getattr(built, "diffusion_decoder", None) is not None:  # LTX-2.5's, which the pipeline's save leaves out
        built.diffusion_decoder.save_pretrained(str(tmp_path / "model/diffusion_decoder"))
    config = GeneratorConfig(name=str(tmp_path / "model"), dtype="bfloat16", device="cpu")
    loaded = build_generator(config)
    empty = empty_encoder_modules(config)
    assert set(empty) == {n for n in family.encoder_components if isinstance(loaded.components.get(n), torch.nn.Module)} and empty
    for name, module in empty.items():
        layout, _ = publish(loaded.components[name], tmp_path / f"{name}.bin")
        assert all(t.is_meta for t in _tensors(module)) and not module.training
        mapped = attach(module, layout)  # raises naming any tensor that differs
        assert all(mapped.holds(t) for t in _tensors(module))


def test_a_layout_sends_a_shared_encoder_back_to_its_pages(tmp_path):
    """What flow-grpo's encodes and dpo's end of caching call (to_host(layout, ...)); a module with no shared copy
    takes module.to("cpu"), which needs a GPU to show anything."""
    from cac_align.gen.parallel import Layout, ParallelSettings, to_host

    shared, _ = _encoder()
    _, home = publish(shared, tmp_path / "e.bin")
    layout = Layout(ParallelSettings(shard="fsdp2"), world=2, rank=1, encoder_homes={id(shared): home})
    shared.to("meta")  # away (a GPU's, in a run)
    to_host(layout, shared)
    assert all(home.holds(t) for t in _tensors(shared))
