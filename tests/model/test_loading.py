"""Weight loading: sharded and single files, bf16/fp32, tied/untied, shardings, clear errors."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from tests.support.reference import hf_captures, load_hf, rel_err, write_hf_checkpoint

from arclens.errors import UserError
from arclens.model.checkpoint import INDEX_FILE
from arclens.model.config import QwenConfig
from arclens.model.hooks import Hook
from arclens.model.loading import _read, load_params, resolve_model
from arclens.model.params import ParamSpec, layer_table, top_table
from arclens.model.qwen import forward_jit
from arclens.model.random_checkpoint import write_random_model

SMALL = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "inter": 96, "vocab": 256}


def _leaves(params):
    return [np.asarray(x) for x in jax.tree.leaves(params)]


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    """A small untied fp32 checkpoint from save_pretrained, copied and broken by the error tests."""
    return write_hf_checkpoint(tmp_path_factory.mktemp("small"), seed=5, tied=False, **SMALL)


def _copy(src, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(src, dst)
    return dst


# --- layouts --------------------------------------------------------------------------------


def test_sharded_checkpoint_equals_single_file(tmp_path, tiny_model_dir):
    sharded = write_random_model(tmp_path / "sharded", preset="tiny", seed=0, max_shard_bytes=500_000)
    index = json.loads((sharded / INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) == 2, "the test wants an index plus exactly two files"
    assert not (sharded / "model.safetensors").exists()
    cfg = QwenConfig.from_pretrained(sharded)
    a = load_params(sharded, cfg, jnp.float32)
    b = load_params(tiny_model_dir, cfg, jnp.float32)  # same preset and seed, one file
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    # and transformers reads the sharded checkpoint the same way we do
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, 300), dtype=np.int32)
    ours = forward_jit(a, cfg, jnp.asarray(tokens), None, hooks=(Hook(3, "resid_post"),), logits=True)
    ref = hf_captures(load_hf(sharded), tokens, [3])
    for k in ("blocks.3.hook_resid_post", "logits"):
        assert rel_err(ours[k], ref[k]) <= 1e-4, k


@pytest.mark.parametrize("disk_dtype", ["bfloat16", "float16"])
def test_half_precision_checkpoint(tmp_path, disk_dtype):
    import torch

    d = write_hf_checkpoint(tmp_path / disk_dtype, seed=6, tied=True, dtype=getattr(torch, disk_dtype), **SMALL)
    cfg = QwenConfig.from_pretrained(d)
    assert cfg.dtype == disk_dtype
    p32 = load_params(d, cfg, jnp.float32)
    p16 = load_params(d, cfg, "bfloat16")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(p32))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p16))
    # bf16/fp16 -> fp32 is exact and fp16 -> bf16 rounds like numpy, so the loads agree
    for x, y in zip(_leaves(p32), _leaves(p16), strict=True):
        np.testing.assert_array_equal(x.astype(ml_dtypes.bfloat16), y)
    # fp32 compute on half-precision weights equals transformers upcasting the same weights
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (1, 300), dtype=np.int32)
    hooks = (Hook(1, "resid_post"),)
    ours = forward_jit(p32, cfg, jnp.asarray(tokens), None, hooks=hooks, logits=True)
    ref = hf_captures(load_hf(d, dtype=torch.float32), tokens, [1])
    for k in ("blocks.1.hook_resid_post", "logits"):
        assert rel_err(ours[k], ref[k]) <= 1e-4, k
    # bf16 compute is close to it, and really bf16
    low = forward_jit(p16, cfg, jnp.asarray(tokens), None, hooks=hooks, logits=True)
    assert low["logits"].dtype == jnp.bfloat16
    assert 0 < rel_err(low["blocks.1.hook_resid_post"], ref["blocks.1.hook_resid_post"]) < 3e-2


def test_tied_checkpoint_with_equal_lm_head_loads(tmp_path, tiny_model_dir):
    d = _copy(tiny_model_dir, tmp_path)
    tensors = load_file(str(d / "model.safetensors"))
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    cfg = QwenConfig.from_pretrained(d)
    p = load_params(d, cfg, jnp.float32)
    assert p.lm_head is None  # tied: the head is the embedding matrix
    tensors["lm_head.weight"][3, 5] += 1.0
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match="lm_head.weight differs from model.embed_tokens.weight"):
        load_params(d, cfg, jnp.float32)


def test_untied_checkpoint_has_its_own_head(small_dir):
    cfg = QwenConfig.from_pretrained(small_dir)
    p = load_params(small_dir, cfg, jnp.float32)
    head = load_file(str(small_dir / "model.safetensors"))["lm_head.weight"]
    np.testing.assert_array_equal(np.asarray(p.lm_head), head.T)


def test_read_maps_any_window_through_split_and_transpose():
    """What a device on a sharded mesh asks for: any window of our layout, read from HF's."""
    cfg = QwenConfig(vocab_size=10, hidden_size=6, intermediate_size=8, num_hidden_layers=1,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=4)
    specs = {**layer_table(cfg, 0), "embed": top_table(cfg)["embed"]}
    rng = np.random.default_rng(0)
    for name, spec in specs.items():
        hf = rng.standard_normal(spec.hf_shape).astype(np.float32)
        full = _read(hf, spec, tuple(slice(None) for _ in spec.shape), np.float32)
        assert full.shape == spec.shape, name
        for _ in range(5):
            idx = []
            for n in spec.shape:
                a = int(rng.integers(0, n))
                idx.append(slice(a, int(rng.integers(a + 1, n + 1))))
            part = _read(hf, spec, tuple(idx), ml_dtypes.bfloat16)
            assert part.dtype == ml_dtypes.bfloat16
            np.testing.assert_array_equal(part, full[tuple(idx)].astype(ml_dtypes.bfloat16), err_msg=name)
    # the meaning of the layouts, spelled out for q and o
    q, o = specs["q"], specs["o"]
    w = np.arange(16 * 6, dtype=np.float32).reshape(16, 6)  # [Hq*hd, D]
    ours = _read(w, q, (slice(None),) * 3, np.float32)
    assert ours[2, 3, 1] == w[3 * 4 + 1, 2]  # q[d, h, e] = W[h*hd + e, d]
    w = np.arange(6 * 16, dtype=np.float32).reshape(6, 16)  # [D, Hq*hd]
    ours = _read(w, o, (slice(None),) * 3, np.float32)
    assert ours[3, 1, 2] == w[2, 3 * 4 + 1]  # o[h, e, d] = W[d, h*hd + e]
    assert isinstance(q, ParamSpec)


# On 4 CPU devices as a (2, 2) mesh (a fresh process: this one has started JAX with one device).
# A (1, 1) mesh would prove nothing: every spec collapses to replicated there.
_PLACEMENT = """
import sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import PartitionSpec as P
from arclens.distributed.mesh import make_mesh
from arclens.distributed.sharding import logical_sharding
from arclens.model.config import QwenConfig
from arclens.model.loading import load_params
from arclens.model.params import layer_table, top_table
assert jax.device_count() == 4
cfg = QwenConfig.from_pretrained(sys.argv[1])
mesh = make_mesh("2,2")
p = load_params(sys.argv[1], cfg, jnp.float32, mesh=mesh)
ref = load_params(sys.argv[1], cfg, jnp.float32)
checked = 0
for i, (layer, ref_layer) in enumerate(zip(p.layers, ref.layers)):
    for name, spec in layer_table(cfg, i).items():
        x = getattr(layer, name)
        want = logical_sharding(mesh, spec.logical_axes, spec.shape)
        assert x.sharding.is_equivalent_to(want, x.ndim), (name, x.sharding, want)
        for shard in x.addressable_shards:  # each device holds its own block, equal to the reference's
            np.testing.assert_array_equal(np.asarray(shard.data), np.asarray(getattr(ref_layer, name))[shard.index])
        checked += 1
for name, spec in top_table(cfg).items():
    x = getattr(p, name)
    assert x.sharding.is_equivalent_to(logical_sharding(mesh, spec.logical_axes, spec.shape), x.ndim), name
    np.testing.assert_array_equal(np.asarray(x), np.asarray(getattr(ref, name)))
# the table, spelled out: heads and MLP columns split over "model", the rest whole on every device
l0 = p.layers[0]
assert l0.q.sharding.spec == P(None, "model", None) and l0.k.sharding.spec == P(None, "model", None)
assert l0.o.sharding.spec == P("model", None, None) and l0.gate.sharding.spec == P(None, "model")
assert l0.down.sharding.spec == P("model", None) and p.embed.sharding.spec == P("model", None)
assert l0.q.addressable_shards[0].data.shape == (64, 2, 16)  # 4 heads over model=2
assert all(s is None for s in l0.input_norm.sharding.spec)
print("placed", checked)
"""


def test_mesh_placement_follows_the_logical_axes(small_dir):
    import subprocess
    import sys

    from tests.support.cli import cli_env

    proc = subprocess.run([sys.executable, "-c", _PLACEMENT, str(small_dir)], capture_output=True, text=True,
                          timeout=300, env=cli_env(JAX_NUM_CPU_DEVICES=4), check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "placed 24" in proc.stdout  # 12 arrays per layer, 2 layers


# --- clear errors ---------------------------------------------------------------------------


def test_wrong_directory(tmp_path):
    with pytest.raises(UserError, match="no such model directory"):
        load_params(tmp_path / "nope")
    with pytest.raises(UserError, match="no config.json"):
        load_params(tmp_path)
    with pytest.raises(UserError, match="no such directory"):
        resolve_model(str(tmp_path / "nope"))
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        resolve_model(str(tmp_path / "f.txt"))


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="arclens-test/not-a-model"):
        resolve_model("arclens-test/not-a-model")


def test_no_weights(small_dir, tmp_path):
    d = _copy(small_dir, tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(UserError, match="expected model.safetensors or model.safetensors.index.json"):
        load_params(d)


def test_missing_tensor(small_dir, tmp_path):
    d = _copy(small_dir, tmp_path)
    tensors = load_file(str(d / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        load_params(d)


def test_untied_without_lm_head(small_dir, tmp_path):
    d = _copy(small_dir, tmp_path)
    tensors = load_file(str(d / "model.safetensors"))
    del tensors["lm_head.weight"]
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match="missing tensor 'lm_head.weight'"):
        load_params(d)


def test_wrong_shape(small_dir, tmp_path):
    d = _copy(small_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"mlp.gate_proj.weight' has shape \[96, 64\], but config.json implies \[128, 64\]"):
        load_params(d)


def test_config_with_fewer_layers_than_the_weights(small_dir, tmp_path):
    d = _copy(small_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_hidden_layers"] = 1
    cfg.pop("layer_types", None)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="weights have layers up to 1 but config.json says num_hidden_layers=1"):
        load_params(d)


def test_missing_shard_and_corrupt_file(tmp_path):
    d = write_random_model(tmp_path / "s", preset="tiny", seed=0, max_shard_bytes=500_000)
    shard = sorted(d.glob("model-*.safetensors"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[:100])
    with pytest.raises(UserError, match="cannot read safetensors file"):
        load_params(d)
    shard.unlink()
    with pytest.raises(UserError, match=f"{shard.name}: missing; {INDEX_FILE} lists it"):
        load_params(d)


def test_unsupported_config(small_dir, tmp_path):
    d = _copy(small_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["use_sliding_window"] = True
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="use_sliding_window=true is not supported"):
        load_params(d)


def test_unsupported_dtype(small_dir):
    with pytest.raises(UserError, match="--dtype: 'int8'"):
        load_params(small_dir, dtype="int8")
