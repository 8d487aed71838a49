"""transformers' Qwen2ForCausalLM as the reference: random checkpoints and hooked captures.

Captures come from forward hooks on transformers' own modules (SPEC.md section 1):
resid_pre = decoder layer input, attn_out = self_attn output[0], resid_mid = input of
post_attention_layernorm, mlp_out = mlp output, resid_post = raw decoder layer output (NOT
``hidden_states[-1]``, which has the final norm applied).
"""

from __future__ import annotations

import numpy as np
import torch


def write_hf_checkpoint(dest, *, seed, hidden, layers, heads, kv_heads, inter, vocab, tied,
                        head_dim=None, theta=1e6, dtype=torch.float32, max_shard_size=None):
    """A random Qwen2 checkpoint written by transformers' ``save_pretrained``.

    Every weight is redrawn (biases and norm weights too: transformers initialises those to 0 and
    1, which would hide a missing bias or norm weight) at a scale where attention is peaked, not
    uniform, so masking and RoPE mistakes show up.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    kw = {} if head_dim is None else {"head_dim": head_dim}
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      tie_word_embeddings=tied, rope_theta=theta, rms_norm_eps=1e-6,
                      max_position_embeddings=4096, **kw)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.5 * torch.randn_like(p))
            elif "embed_tokens" in name or "lm_head" in name:
                p.copy_(torch.randn_like(p))
            else:  # Linear [out, in]: unit-variance outputs, so q.k scores are O(sqrt(hd))
                p.copy_(torch.randn_like(p) / np.sqrt(p.shape[1]))
    model = model.to(dtype)
    kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(str(dest), **kw)
    return dest


def load_hf(model_dir, dtype=torch.float32, device="cpu", attn="eager"):
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(str(model_dir), dtype=dtype, attn_implementation=attn)
    return model.to(device).eval()


def hf_captures(model, tokens, layers, attention_mask=None, logits=True) -> dict[str, np.ndarray]:
    """Run ``tokens [B, T]`` through the HF model; every hook kind at ``layers``, in float32."""
    caps: dict[str, torch.Tensor] = {}
    handles = []

    def first(x):
        return x[0] if isinstance(x, (tuple, list)) else x

    for i in layers:
        layer = model.model.layers[i]
        p = f"blocks.{i}.hook_"

        def pre(mod, args, kwargs, name=p + "resid_pre"):
            caps[name] = args[0] if args else kwargs["hidden_states"]

        def post(mod, args, kwargs, out, name=p + "resid_post"):
            caps[name] = first(out)

        def attn(mod, args, kwargs, out, name=p + "attn_out"):
            caps[name] = out[0]

        def mid(mod, args, kwargs, name=p + "resid_mid"):
            caps[name] = args[0] if args else kwargs["hidden_states"]

        def mlp(mod, args, kwargs, out, name=p + "mlp_out"):
            caps[name] = first(out)

        handles += [
            layer.register_forward_pre_hook(pre, with_kwargs=True),
            layer.register_forward_hook(post, with_kwargs=True),
            layer.self_attn.register_forward_hook(attn, with_kwargs=True),
            layer.post_attention_layernorm.register_forward_pre_hook(mid, with_kwargs=True),
            layer.mlp.register_forward_hook(mlp, with_kwargs=True),
        ]
    try:
        device = next(model.parameters()).device
        ids = torch.as_tensor(np.asarray(tokens), dtype=torch.long, device=device)
        am = None if attention_mask is None else torch.as_tensor(np.asarray(attention_mask), device=device)
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=am, use_cache=False)
        if logits:
            caps["logits"] = out.logits
    finally:
        for h in handles:
            h.remove()
    return {k: v.detach().float().cpu().numpy() for k, v in caps.items()}


def rel_err(ours, ref) -> float:
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def hf_reference(model_dir, token_ids: np.ndarray, hook_names: list[str]) -> dict[str, np.ndarray]:
    """``hf_captures`` of one prompt through the float32 eager model in ``model_dir`` (loaded once),
    only ``hook_names``, each ``[n, d]``."""
    layers = sorted({int(name.split(".")[1]) for name in hook_names})
    caps = hf_captures(_hf_model(str(model_dir)), np.asarray(token_ids)[None], layers, logits=False)
    return {name: caps[name][0] for name in hook_names}


_models: dict = {}


def _hf_model(model_dir: str):
    """The float32 eager reference for ``model_dir``, loaded once per test session."""
    if model_dir not in _models:
        _models[model_dir] = load_hf(model_dir)
    return _models[model_dir]
