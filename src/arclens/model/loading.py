"""Find a checkpoint and load its weights straight into their target sharding.

Each tensor is read with ``safe_open(..., framework="numpy").get_slice`` inside the callback of
``jax.make_array_from_callback``: only the piece a device needs is read from the (memory-mapped)
file, converted and handed to that device, so a 7B checkpoint never has two copies on the host,
and on a multi-host mesh each process reads only what its own devices hold.
"""

from __future__ import annotations

import json
import re
from contextlib import ExitStack
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (must be imported before safetensors hands bf16 to numpy)
import numpy as np

from arclens.errors import UserError
from arclens.model.checkpoint import weight_map
from arclens.model.config import QwenConfig
from arclens.model.params import Layer, Params, ParamSpec, layer_table, top_table

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_ST_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a forward pass and a tokenizer need from the hub; never *.bin / *.pth / *.gguf.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


def resolve_model(name_or_path: str | Path) -> Path:
    """A local model directory, or a hub id (``Qwen/Qwen2.5-0.5B``) fetched with huggingface_hub
    (which uses its own cache and honours ``HF_HUB_OFFLINE``)."""
    s = str(name_or_path)
    p = Path(s).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UserError(f"--model {s}: is a file; expected a model directory (config.json, *.safetensors)")
        return p
    if s.startswith((".", "/", "~")) or not _HUB_ID.match(s):
        raise UserError(f"--model {s}: no such directory (and not a hub id like Qwen/Qwen2.5-0.5B)")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency
        raise UserError(f"--model {s}: not a local directory, and huggingface_hub is not installed ({e})") from None
    try:
        return Path(snapshot_download(repo_id=s, allow_patterns=HUB_PATTERNS))
    except GatedRepoError:
        raise UserError(f"--model {s}: the hub repository is gated; log in with `hf auth login` first") from None
    except RepositoryNotFoundError:
        raise UserError(f"--model {s}: no such local directory or hub repository") from None
    except LocalEntryNotFoundError:
        raise UserError(
            f"--model {s}: not a local directory, and it cannot be fetched from the hub (offline, "
            "or HF_HUB_OFFLINE is set, and it is not in the local cache); pass a local directory"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise UserError(f"--model {s}: cannot fetch from the hub ({type(e).__name__}: {e})") from None


def _config_label(model_path: str | Path, key: str) -> bool:
    try:
        return bool(json.loads((Path(model_path) / "config.json").read_text()).get(key, False))
    except (OSError, ValueError):
        return False


def is_random_checkpoint(model_path: str | Path) -> bool:
    """True for a checkpoint written by `arclens random-model` (its config.json says so), so that a
    store of random activations is labelled as such wherever it goes."""
    return _config_label(model_path, "arclens_random")


def is_toy_checkpoint(model_path: str | Path) -> bool:
    """True for a checkpoint trained by `arclens toy-model` (config.json's ``arclens_toy``)."""
    return _config_label(model_path, "arclens_toy")


class Checkpoint:
    """The safetensors files of one model directory (model/checkpoint.py finds them), opened
    lazily; tensor name -> slice."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise UserError(f"{self.path}: no such model directory")
        self.weight_map = weight_map(self.path)
        self.files = sorted(set(self.weight_map.values()))
        self._stack = ExitStack()
        self._handles: dict[str, object] = {}

    def _handle(self, fname: str):
        if fname not in self._handles:
            from safetensors import SafetensorError, safe_open

            f = self.path / fname
            try:
                self._handles[fname] = self._stack.enter_context(safe_open(str(f), framework="numpy"))
            except (SafetensorError, OSError, ValueError) as e:
                raise UserError(f"{f}: cannot read safetensors file ({e})") from None
        return self._handles[fname]

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def get_slice(self, name: str):
        if name not in self.weight_map:
            raise UserError(f"{self.path}: missing tensor {name!r}")
        fname = self.weight_map[name]
        handle = self._handle(fname)
        from safetensors import SafetensorError

        try:
            return handle.get_slice(name)
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{self.path / fname}: cannot read tensor {name!r} ({e})") from None

    def close(self) -> None:
        self._stack.close()
        self._handles.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _read(sl, spec: ParamSpec, idx: tuple, np_dtype) -> np.ndarray:
    """The part ``idx`` (slices into OUR layout) of the HF tensor ``sl``, in our layout.

    Maps the requested window back through the transpose and the head split, reads only the
    rows/columns needed, and converts them. ``idx`` comes from ``make_array_from_callback``:
    contiguous slices, one per dimension of ``spec.shape``.
    """
    ranges = [s.indices(n)[:2] for s, n in zip(idx, spec.shape)]
    # our dim i == dim perm[i] of the (head-split) source
    rs = list(ranges)
    if spec.perm is not None:
        for i, p in enumerate(spec.perm):
            rs[p] = ranges[i]
    if spec.split is None:
        arr = sl[tuple(slice(a, b) for a, b in rs)]
    else:
        dim, heads = spec.split
        hd = spec.hf_shape[dim] // heads
        (h0, h1), (e0, e1) = rs[dim], rs[dim + 1]
        src = rs[:dim] + [(h0 * hd, h1 * hd)] + rs[dim + 2:]
        arr = sl[tuple(slice(a, b) for a, b in src)]
        shape = list(arr.shape)
        arr = arr.reshape(shape[:dim] + [h1 - h0, hd] + shape[dim + 1:])
        if (e0, e1) != (0, hd):
            arr = arr[(slice(None),) * (dim + 1) + (slice(e0, e1),)]
    if spec.perm is not None:
        arr = arr.transpose(spec.perm)
    return np.ascontiguousarray(arr, dtype=np_dtype)


def _check(ckpt: Checkpoint, spec: ParamSpec) -> None:
    sl = ckpt.get_slice(spec.hf_name)
    shape = tuple(sl.get_shape())
    if shape != spec.hf_shape:
        raise UserError(
            f"{ckpt.path}: tensor {spec.hf_name!r} has shape {list(shape)}, but config.json implies "
            f"{list(spec.hf_shape)}"
        )
    dt = sl.get_dtype()
    if dt not in _ST_DTYPES:
        raise UserError(f"{ckpt.path}: tensor {spec.hf_name!r} has dtype {dt}; expected one of F32, BF16, F16")


def _check_tied_head(ckpt: Checkpoint, config: QwenConfig, chunk_rows: int = 8192) -> None:
    """A tied checkpoint may still carry ``lm_head.weight``; accept it only when it is the
    embedding matrix (row chunks, so this never holds both matrices on the host)."""
    if "lm_head.weight" not in ckpt:
        return
    head, emb = ckpt.get_slice("lm_head.weight"), ckpt.get_slice("model.embed_tokens.weight")
    if tuple(head.get_shape()) != tuple(emb.get_shape()):
        raise UserError(
            f"{ckpt.path}: lm_head.weight has shape {head.get_shape()} but the embeddings "
            f"{emb.get_shape()}, and config.json says tie_word_embeddings=true"
        )
    for r in range(0, config.vocab_size, chunk_rows):
        end = min(r + chunk_rows, config.vocab_size)  # safetensors slices do not clamp
        a = np.asarray(head[r:end], np.float32)
        b = np.asarray(emb[r:end], np.float32)
        if not np.array_equal(a, b):
            raise UserError(
                f"{ckpt.path}: config.json says tie_word_embeddings=true but lm_head.weight differs from "
                "model.embed_tokens.weight; fix the config (tie_word_embeddings=false) or the weights"
            )


def _dtype(dtype) -> np.dtype:
    name = jnp.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in COMPUTE_DTYPES:
        raise UserError(f"--dtype: {name!r} is not one of {', '.join(COMPUTE_DTYPES)}")
    return jnp.dtype(COMPUTE_DTYPES[name])


def load_params(
    path: str | Path,
    config: QwenConfig | None = None,
    dtype=jnp.bfloat16,
    sharding_rules=None,
    mesh=None,
) -> Params:
    """Load a Hugging Face Qwen2 checkpoint into ``Params`` of ``dtype`` (the compute dtype).

    With ``mesh``, every array is placed by ``logical_sharding(mesh, logical_axes, shape,
    sharding_rules)``; without, on the first local device. Every tensor's presence, shape and
    dtype is checked before any is loaded, so a bad checkpoint fails fast with one UserError.
    """
    path = Path(path)
    config = QwenConfig.from_pretrained(path) if config is None else config
    np_dtype = _dtype(dtype)
    if mesh is not None:
        from arclens.distributed.sharding import DEFAULT_RULES, logical_sharding

        rules = DEFAULT_RULES if sharding_rules is None else sharding_rules

        def sharding_for(spec: ParamSpec):
            return logical_sharding(mesh, spec.logical_axes, spec.shape, rules)
    else:
        single = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

        def sharding_for(spec: ParamSpec):
            return single

    top = top_table(config)
    layers = [layer_table(config, i) for i in range(config.num_hidden_layers)]
    with Checkpoint(path) as ckpt:
        for spec in [*top.values(), *(s for t in layers for s in t.values())]:
            _check(ckpt, spec)
        extra = sorted({int(m.group(1)) for k in ckpt.weight_map if (m := _LAYER_RE.match(k))}
                       - set(range(config.num_hidden_layers)))
        if extra:  # a config that drops layers would give a different model, silently
            raise UserError(
                f"{path}: the weights have layers up to {extra[-1]} but config.json says "
                f"num_hidden_layers={config.num_hidden_layers}"
            )
        if config.tie_word_embeddings:
            _check_tied_head(ckpt, config)

        def load(spec: ParamSpec) -> jax.Array:
            sl = ckpt.get_slice(spec.hf_name)
            return jax.make_array_from_callback(
                spec.shape, sharding_for(spec), lambda idx: _read(sl, spec, idx, np_dtype)
            )

        return Params(
            embed=load(top["embed"]),
            layers=[Layer(**{k: load(s) for k, s in t.items()}) for t in layers],
            final_norm=load(top["final_norm"]),
            lm_head=load(top["lm_head"]) if "lm_head" in top else None,
        )


def load_model(name_or_path: str, dtype=jnp.bfloat16, mesh=None, sharding_rules=None):
    """``resolve_model`` + ``QwenConfig.from_pretrained`` + ``load_params`` -> (path, config, params)."""
    path = resolve_model(name_or_path)
    config = QwenConfig.from_pretrained(path)
    return path, config, load_params(path, config, dtype, sharding_rules=sharding_rules, mesh=mesh)
