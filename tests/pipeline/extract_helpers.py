"""Shared pieces of the extract tests: small task files, running the CLI, the transformers reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def small_tasks(n_tasks: int = 4, seed: int = 0) -> dict:
    """ARC tasks with small grids (prompts of ~150-500 tokens), some with two test inputs."""
    rng = np.random.default_rng(seed)

    def grid():
        h, w = rng.integers(1, 6, size=2)
        return rng.integers(0, 10, size=(h, w)).tolist()

    tasks = {}
    for i in range(n_tasks):
        n_test = 2 if i % 2 else 1
        tasks[f"t{i:03d}"] = {
            "train": [{"input": grid(), "output": grid()} for _ in range(int(rng.integers(1, 4)))],
            "test": [{"input": grid(), "output": grid()} for _ in range(n_test)],
        }
    return tasks


def write_tasks(path: Path, n_tasks: int = 4, seed: int = 0) -> Path:
    path.write_text(json.dumps(small_tasks(n_tasks, seed)))
    return path


def extract_args(model, tasks, out, *extra) -> list[str]:
    return ["extract", "--model", str(model), "--tasks", str(tasks), "--out", str(out), *map(str, extra)]


def cli_env(**extra) -> dict:
    env = dict(os.environ)
    env.update({"JAX_PLATFORMS": "cpu", "JAX_DEFAULT_MATMUL_PRECISION": "highest", "TOKENIZERS_PARALLELISM": "false",
                "PYTHONPATH": str(REPO / "src")})
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_cli(args: list[str], timeout: float = 300, **env) -> subprocess.CompletedProcess:
    """``arclens ARGS`` in a fresh process (needed to kill it or signal it)."""
    return subprocess.run([sys.executable, "-m", "arclens.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=cli_env(**env), check=False)


def stored(dest, storage_options=None) -> dict[str, tuple[dict, dict]]:
    """key -> (sample table entry, arrays) for every committed sample."""
    import arclens

    store = arclens.open_store(str(dest), storage_options=storage_options)
    out = {}
    for sample, arrays in store.samples():
        assert sample["key"] not in out, f"{sample['key']} stored twice"
        out[sample["key"]] = (sample, {k: np.array(v) for k, v in arrays.items()})
    return out


def hf_reference(model_dir, token_ids: np.ndarray, hook_names: list[str]) -> dict[str, np.ndarray]:
    """transformers' Qwen2ForCausalLM (float32, eager) captures for one prompt, by forward hooks."""
    import torch

    model = _hf_model(str(model_dir))
    caps: dict[str, torch.Tensor] = {}
    handles = []
    for name in hook_names:
        _, layer_s, kind = name.split(".")
        layer = model.model.layers[int(layer_s)]
        kind = kind.removeprefix("hook_")

        def keep(value, name=name):
            caps[name] = value[0] if isinstance(value, tuple) else value

        if kind == "resid_pre":
            handles.append(layer.register_forward_pre_hook(lambda m, a, kw, k=keep: k(a[0] if a else kw["hidden_states"]), with_kwargs=True))
        elif kind == "resid_post":
            handles.append(layer.register_forward_hook(lambda m, a, kw, o, k=keep: k(o), with_kwargs=True))
        elif kind == "attn_out":
            handles.append(layer.self_attn.register_forward_hook(lambda m, a, kw, o, k=keep: k(o), with_kwargs=True))
        elif kind == "resid_mid":
            handles.append(layer.post_attention_layernorm.register_forward_pre_hook(lambda m, a, k=keep: k(a[0])))
        elif kind == "mlp_out":
            handles.append(layer.mlp.register_forward_hook(lambda m, a, o, k=keep: k(o)))
    try:
        with torch.no_grad():
            model(input_ids=torch.as_tensor(token_ids[None].astype(np.int64)), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {k: v[0].float().numpy() for k, v in caps.items()}


_models: dict = {}


def _hf_model(model_dir: str):
    if model_dir not in _models:
        import torch
        from transformers import Qwen2ForCausalLM

        _models[model_dir] = Qwen2ForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    return _models[model_dir]


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))
