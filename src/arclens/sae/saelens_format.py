"""SAELens's v6 folder layout: ``cfg.json`` + ``sae_weights.safetensors`` (SPEC.md section 5).

``load`` reads what arclens exports and what SAELens saves (``SAE.save_model``, its trainers'
checkpoints), from a local folder or any fsspec URL. ``save`` writes the two files the way
``sae_lens.SAE.load_from_disk`` reads them. Both are checked against sae-lens itself in
tests/sae/ (round trips in both directions, equal ``encode``/``decode``).

SAELens's architectures map onto ours (sae/model.py) like this:

| SAELens ``architecture`` | ours | note |
| --- | --- | --- |
| ``standard`` | ``standard`` | ReLU SAE |
| ``jumprelu`` | ``jumprelu`` | also how SAELens saves a trained BatchTopK |
| ``topk`` | ``topk`` | ``rescale_acts_by_decoder_norm`` honoured |
| ``transcoder`` | ``standard``, d_out | ReLU transcoder |
| ``jumprelu_transcoder`` | ``jumprelu``, d_out | |
| ``topk`` with ``metadata.hook_name_out`` | ``topk`` transcoder | see below |

SAELens 6.54.12 has no TopK transcoder class. A TopK transcoder whose two hooks have the same
width (every arclens hook is ``d_model`` wide) is saved as SAELens's ``topk`` with
``apply_b_dec_to_input: false`` and the output hook in ``metadata.hook_name_out``: SAELens's
``TopKSAE.encode``/``decode`` then compute exactly the transcoder's (``topk(x W_enc + b_enc)``,
``z W_dec + b_dec``), which tests/sae/ checks. What SAELens does *not* know is that the output
belongs at another hook: its ``forward``/splicing helpers would put the reconstruction back at
``hook_name``. Use ``encode``/``decode`` (or arclens's own splice, which reads ``hook_name_out``).
A TopK transcoder between hooks of different widths has no SAELens form and is refused.

Anything else (gated, skip transcoders, hook_z reshaping, run-time layer norm ...) is refused with
one line naming the field, rather than loaded into something that computes another function.
"""

from __future__ import annotations

import json
import re

import numpy as np

from arclens.errors import UserError
from arclens.sae.model import SAE, SAEConfig, new_sae

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
# The sae-lens release whose loader tests/sae/ checks our files against; written as the files'
# ``metadata.sae_lens_version`` (SAELens reads configs of version >= 6 as v6 layouts).
SAELENS_FORMAT_VERSION = "6.54.12"

_FROM_SAELENS = {
    "standard": ("standard", False),
    "jumprelu": ("jumprelu", False),
    "topk": ("topk", False),
    "transcoder": ("standard", True),
    "jumprelu_transcoder": ("jumprelu", True),
}
# Run-time input normalisations that are the identity at inference in SAELens's load_from_disk.
_IDENTITY_NORMALISATIONS = ("none", "expected_average_only_in")


def saelens_architecture(cfg: SAEConfig) -> str:
    """The ``architecture`` string SAELens registers for ``cfg``."""
    if not cfg.is_transcoder:
        return cfg.architecture
    if cfg.architecture == "topk" and cfg.d_in == cfg.d_out and not cfg.apply_b_dec_to_input:
        return "topk"  # module doc: SAELens's TopKSAE computes a same-width TopK transcoder exactly
    names = {"standard": "transcoder", "jumprelu": "jumprelu_transcoder"}
    if cfg.architecture not in names:
        raise UserError(f"a {cfg.architecture} transcoder has no SAELens architecture "
                        f"(SAELens {SAELENS_FORMAT_VERSION} has transcoder and jumprelu_transcoder)")
    return names[cfg.architecture]


def hook_layer(hook_name: str | None) -> int | None:
    """``blocks.12.hook_resid_post`` -> 12 (SAEBench reads ``hook_layer``)."""
    m = re.match(r"^blocks\.(\d+)\.", hook_name or "")
    return int(m.group(1)) if m else None


def cfg_dict(cfg: SAEConfig, *, context_size: int | None = None, extra_metadata: dict | None = None) -> dict:
    """``cfg.json`` for ``cfg``: SAELens v6 fields at the top, hook and model under ``metadata``."""
    metadata = dict(cfg.metadata)
    metadata.update({
        "sae_lens_version": metadata.get("sae_lens_version", SAELENS_FORMAT_VERSION),
        "sae_lens_training_version": metadata.get("sae_lens_training_version", SAELENS_FORMAT_VERSION),
        "model_name": cfg.model_name,
        "hook_name": cfg.hook_name,
        "hook_layer": hook_layer(cfg.hook_name),
        "context_size": context_size if context_size is not None else metadata.get("context_size"),
        "prepend_bos": False,  # arc24's prompts start with the chat template, never a BOS token
    })
    if cfg.is_transcoder:
        metadata["hook_name_out"] = cfg.hook_name_out
        metadata["hook_layer_out"] = hook_layer(cfg.hook_name_out)
    metadata.update(extra_metadata or {})
    out = {
        "architecture": saelens_architecture(cfg),
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
    }
    if cfg.architecture == "topk":
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = cfg.rescale_acts_by_decoder_norm
    if cfg.is_transcoder and out["architecture"] != "topk":
        out["d_out"] = cfg.d_out
    return out


def weights_dict(sae: SAE) -> dict[str, np.ndarray]:
    out = {name: np.asarray(getattr(sae, name)) for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if sae.cfg.architecture == "jumprelu":
        out["threshold"] = np.asarray(sae.threshold)
    return out


def save(sae: SAE, dest: str, *, context_size: int | None = None, extra_metadata: dict | None = None,
         storage_options: dict | None = None) -> None:
    """Write ``dest/cfg.json`` and ``dest/sae_weights.safetensors`` (local folder or fsspec URL).
    Each file is written whole (a temporary file and a rename locally), weights first, so a folder
    with a ``cfg.json`` always has its weights."""
    from safetensors.numpy import save as st_save

    from arclens.store import fs as storefs

    fs, root = storefs.get_fs(dest, storage_options)
    weights = st_save({k: np.ascontiguousarray(v) for k, v in weights_dict(sae).items()})
    cfg = json.dumps(cfg_dict(sae.cfg, context_size=context_size, extra_metadata=extra_metadata), indent=2)
    if storefs.is_local(fs):
        fs.makedirs(root, exist_ok=True)
    storefs.write_whole(fs, storefs.join(root, WEIGHTS_FILE), weights)
    storefs.write_whole(fs, storefs.join(root, CFG_FILE), cfg.encode())


def config_from_dict(d: dict, where: str = "cfg.json") -> SAEConfig:
    """Our SAEConfig for a SAELens v6 ``cfg.json`` dict (UserError naming what is unsupported)."""
    arch = d.get("architecture")
    if arch not in _FROM_SAELENS:
        raise UserError(f"{where}: architecture {arch!r} is not supported (expected one of "
                        f"{', '.join(_FROM_SAELENS)})")
    ours, transcoder = _FROM_SAELENS[arch]
    metadata_in = d.get("metadata") or {}
    if arch == "topk" and metadata_in.get("hook_name_out") and d.get("apply_b_dec_to_input") is False:
        transcoder = True  # a same-width TopK transcoder (module doc)
    for key in ("d_in", "d_sae", "dtype"):
        if key not in d:
            raise UserError(f"{where}: missing {key!r} (SAELens v6 cfg.json has architecture, d_in, d_sae, dtype)")
    norm = d.get("normalize_activations", "none")
    if norm not in _IDENTITY_NORMALISATIONS:
        raise UserError(f"{where}: normalize_activations {norm!r} is not supported (expected 'none')")
    if d.get("reshape_activations", "none") != "none":
        raise UserError(f"{where}: reshape_activations {d['reshape_activations']!r} is not supported "
                        "(arclens has no hook_z)")
    metadata = dict(d.get("metadata") or {})
    version = str(metadata.get("sae_lens_version") or d.get("sae_lens_version") or "")
    if not re.match(r"^\d+", version) or int(re.match(r"^\d+", version).group()) < 6:
        raise UserError(f"{where}: sae_lens_version {version or 'missing'}: expected a SAELens v6 folder "
                        "(re-save it with sae-lens >= 6)")
    d_in, d_sae = int(d["d_in"]), int(d["d_sae"])
    try:
        return SAEConfig(
            architecture=ours,
            d_in=d_in,
            d_sae=d_sae,
            d_out=int(d.get("d_out", d_in)) if transcoder else d_in,
            k=int(d["k"]) if ours == "topk" and d.get("k") is not None else None,
            apply_b_dec_to_input=bool(d.get("apply_b_dec_to_input", not transcoder)) and not transcoder,
            rescale_acts_by_decoder_norm=bool(d.get("rescale_acts_by_decoder_norm", False)),
            dtype=str(d["dtype"]).removeprefix("torch."),
            hook_name=metadata.get("hook_name") or d.get("hook_name"),
            hook_name_out=(metadata.get("hook_name_out") or d.get("hook_name_out")) if transcoder else None,
            model_name=metadata.get("model_name") or d.get("model_name"),
            metadata_json=json.dumps(metadata, sort_keys=True),
        )
    except ValueError as err:
        raise UserError(f"{where}: {err}") from None


def load(path: str, *, dtype: str | None = None, storage_options: dict | None = None) -> SAE:
    """An SAE from a folder in SAELens's v6 layout (ours or SAELens's), local or fsspec URL.
    ``dtype`` overrides the weights' dtype (as SAELens's ``load_from_disk(dtype=)``)."""
    import dataclasses

    import ml_dtypes  # noqa: F401 - lets safetensors hand bf16 tensors to numpy
    from safetensors.numpy import load as st_load

    from arclens.store import fs as storefs

    fs, root = storefs.get_fs(path, storage_options)
    cfg_path = storefs.join(root, CFG_FILE)
    try:
        raw_cfg = storefs.read_bytes(fs, cfg_path)
    except FileNotFoundError:
        raise UserError(f"--sae {path}: no {CFG_FILE} there (expected an SAE folder in SAELens's layout)") from None
    try:
        d = json.loads(raw_cfg)
    except ValueError as err:
        raise UserError(f"{path}/{CFG_FILE}: not JSON ({err})") from None
    cfg = config_from_dict(d, f"{path}/{CFG_FILE}")
    if dtype is not None:
        cfg = dataclasses.replace(cfg, dtype=dtype)
    try:
        tensors = st_load(storefs.read_bytes(fs, storefs.join(root, WEIGHTS_FILE)))
    except FileNotFoundError:
        raise UserError(f"--sae {path}: {CFG_FILE} but no {WEIGHTS_FILE}") from None
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for a bad file
        raise UserError(f"{path}/{WEIGHTS_FILE}: not a readable safetensors file ({err})") from None
    missing = [n for n in ("W_enc", "b_enc", "W_dec", "b_dec") if n not in tensors]
    if cfg.architecture == "jumprelu" and "threshold" not in tensors:
        missing.append("threshold")
    if missing:
        raise UserError(f"{path}/{WEIGHTS_FILE}: missing {', '.join(missing)}")
    if "finetuning_scaling_factor" in tensors or ("scaling_factor" in tensors
                                                 and not np.allclose(tensors["scaling_factor"], 1.0)):
        raise UserError(f"{path}/{WEIGHTS_FILE}: a finetuning scaling factor is not supported")
    try:
        return new_sae(cfg, *(tensors[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec")),
                       threshold=tensors.get("threshold"))
    except ValueError as err:
        raise UserError(f"{path}/{WEIGHTS_FILE}: {err}") from None
