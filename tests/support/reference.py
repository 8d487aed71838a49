"""transformers' Qwen2ForCausalLM as the reference: random checkpoints and hooked captures.

Captures come from forward hooks on transformers' own modules (SPEC.md section 1):
resid_pre = decoder layer input, attn_out = self_attn output[0], resid_mid = input of
post_attention_layernorm, mlp_out = mlp output, resid_post = raw decoder layer output (NOT
``hidden_states[-1]``, which has the final norm applied).
"""

from __future__ import annotations

import contextlib

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


# --- replacement hooks: the transformers side of arclens's edits (model/edits.py) ---------------


def _hook_parts(name: str) -> tuple[int, str]:
    layer, kind = name.split(".")[1], name.split(".hook_")[1]
    return int(layer), kind


@contextlib.contextmanager
def replacement_hooks(model, replacements: dict, reads=()):
    """Forward hooks on transformers' Qwen2 modules that REPLACE the value at arclens hook names:
    ``resid_pre`` (the decoder layer's input), ``attn_out`` (``self_attn`` output[0]), ``mlp_out``
    (the ``mlp`` output) and ``resid_post`` (the decoder layer's output). Each replacement is
    ``fn(value, seen) -> tensor``, where ``seen`` holds the current forward call's values of the
    hooks in ``reads`` (which may also be ``resid_mid``, the input of ``post_attention_layernorm``,
    e.g. a transcoder's input). They fire on every forward call, so inside ``model.generate`` they
    edit the prefill and every decode step, and the KV cache holds the edited keys and values.
    ``resid_mid`` cannot be replaced this way: in transformers it is not a module boundary of the
    residual stream."""
    seen: dict = {}
    handles = []

    def first(x):
        return x[0] if isinstance(x, (tuple, list)) else x

    def with_first(out, new):
        return (new, *out[1:]) if isinstance(out, (tuple, list)) else new

    for name in reads:
        layer, kind = _hook_parts(name)
        mod = model.model.layers[layer]

        def pre(m, args, kwargs, name=name):
            seen[name] = args[0] if args else kwargs["hidden_states"]

        def post(m, args, kwargs, out, name=name):
            seen[name] = first(out)

        if kind == "resid_pre":
            handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
        elif kind == "resid_mid":
            handles.append(mod.post_attention_layernorm.register_forward_pre_hook(pre, with_kwargs=True))
        else:
            target = {"attn_out": mod.self_attn, "mlp_out": mod.mlp, "resid_post": mod}[kind]
            handles.append(target.register_forward_hook(post, with_kwargs=True))

    for name, fn in replacements.items():
        layer, kind = _hook_parts(name)
        mod = model.model.layers[layer]
        if kind == "resid_pre":

            def pre_replace(m, args, kwargs, fn=fn):
                if args:
                    return (fn(args[0], seen), *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"], seen)}

            handles.append(mod.register_forward_pre_hook(pre_replace, with_kwargs=True))
        elif kind in ("attn_out", "mlp_out", "resid_post"):
            target = {"attn_out": mod.self_attn, "mlp_out": mod.mlp, "resid_post": mod}[kind]

            def post_replace(m, args, kwargs, out, fn=fn):
                return with_first(out, fn(first(out), seen))

            handles.append(target.register_forward_hook(post_replace, with_kwargs=True))
        else:
            raise ValueError(f"{name}: transformers has no module whose output is this hook")
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def hf_logits(model, tokens, attention_mask=None) -> np.ndarray:
    """float32 logits ``[B, T, V]`` of ``tokens`` through ``model`` (with whatever hooks it has)."""
    device = next(model.parameters()).device
    ids = torch.as_tensor(np.array(tokens), dtype=torch.long, device=device)
    am = None if attention_mask is None else torch.as_tensor(np.array(attention_mask), device=device)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=am, use_cache=False).logits.float().cpu().numpy()


def shared_hf(model_dir):
    """The float32 eager transformers model of ``model_dir``, loaded once per test session (hooks
    added to it must be removed: ``replacement_hooks`` does)."""
    return _hf_model(str(model_dir))


def log_softmax64(logits) -> np.ndarray:
    lg = np.asarray(logits, np.float64)
    lg = lg - lg.max(-1, keepdims=True)
    return lg - np.log(np.exp(lg).sum(-1, keepdims=True))


def next_token_ce(logits, tokens) -> np.ndarray:
    """Per-position next-token cross-entropy (nats, float64): ``[T - 1]``, position p predicting
    ``tokens[p + 1]``; ``logits`` ``[T, V]``."""
    logp = log_softmax64(logits)[:-1]
    return -logp[np.arange(len(logp)), np.asarray(tokens)[1:]]


def kl_divergence(logits_p, logits_q) -> np.ndarray:
    """KL(p || q) per position (float64) between the distributions of two ``[T, V]`` logits."""
    lp, lq = log_softmax64(logits_p), log_softmax64(logits_q)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def saelens_reconstruction(sae_dir):
    """``fn(value, seen)`` replacing a hook by SAELens's own reconstruction of the SAE saved in
    ``sae_dir`` (``SAE.load_from_disk``; a transcoder encodes its input hook from ``seen``)."""
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(sae_dir))
    source = sae.cfg.metadata.hook_name
    transcoder = getattr(sae.cfg.metadata, "hook_name_out", None) is not None and hasattr(sae.cfg, "d_out")

    def fn(value, seen):
        x = seen[source] if transcoder else value
        with torch.no_grad():
            return sae.decode(sae.encode(x.float())).to(value.dtype)

    return fn, sae


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """torch's intra-op threads set to ``n`` for a block (restored after). The reference models
    are tiny: on a busy 2-core machine, torch's own thread pool contending with XLA's costs more
    than it gains (measured: 10x slower eager forwards under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
