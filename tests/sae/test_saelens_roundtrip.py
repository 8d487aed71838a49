"""SAELens round trips, both directions, for every architecture (sae-lens 6.54.12, CPU torch).

- What `train-sae` exports loads with ``sae_lens.SAE.load_from_disk``, and SAELens's ``encode``
  and ``decode`` equal arclens's within 1e-5 (SAEs and transcoders of all four architectures).
- What SAELens saves (its inference classes, and SAEs its trainer trained) loads with
  ``arclens.sae.load`` and computes what SAELens computes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

sae_lens = pytest.importorskip("sae_lens")
torch = pytest.importorskip("torch")

ARCHS = ["topk", "batchtopk", "jumprelu", "relu"]
SAELENS_ARCH = {  # what SAELens must see in cfg.json, for (arch, transcoder)
    ("topk", False): "topk", ("batchtopk", False): "jumprelu", ("jumprelu", False): "jumprelu",
    ("relu", False): "standard", ("topk", True): "topk", ("batchtopk", True): "jumprelu_transcoder",
    ("jumprelu", True): "jumprelu_transcoder", ("relu", True): "transcoder",
}


def _inputs(d: int, seed: int = 0) -> np.ndarray:
    """Raw-scale inputs like the planted store's (offset + sparse codes), plus plain noise."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0, 1.5, (48, d)), rng.normal(0, 0.2, (16, d))]).astype(np.float32)


def _compare(folder: str, x: np.ndarray) -> None:
    import arclens.sae as asae

    ours = asae.load(folder)
    theirs = sae_lens.SAE.load_from_disk(folder, device="cpu")
    with torch.no_grad():
        xt = torch.from_numpy(x)
        z_theirs = theirs.encode(xt).numpy()
        xh_theirs = theirs.decode(torch.from_numpy(z_theirs)).numpy()
    z_ours = np.asarray(ours.encode(x))
    xh_ours = np.asarray(ours.decode(z_ours))
    assert (z_ours > 0).sum() > 0, "no latent fired: the comparison would prove nothing"
    np.testing.assert_allclose(z_ours, z_theirs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(xh_ours, xh_theirs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours.decode(z_theirs)), xh_theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("transcoder", [False, True], ids=["sae", "transcoder"])
@pytest.mark.parametrize("arch", ARCHS)
def test_export_loads_in_saelens_with_equal_encode_decode(arch, transcoder, four_archs):
    folder = four_archs[(arch, transcoder)]
    with open(f"{folder}/cfg.json") as f:
        cfg = json.load(f)
    assert cfg["architecture"] == SAELENS_ARCH[(arch, transcoder)]
    assert cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["hook_name"].endswith("hook_resid_mid" if transcoder else "hook_resid_post")
    if transcoder:
        assert cfg["metadata"]["hook_name_out"].endswith("hook_mlp_out")
        assert cfg["apply_b_dec_to_input"] is False
    _compare(folder, _inputs(32))


# -- SAELens -> arclens ------------------------------------------------------------------------


def _randomise(sae, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name == "threshold":
                p.copy_(torch.rand(p.shape, generator=g) * 0.5)
            elif name.startswith("b_"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[0] ** 0.5)


def _saelens_inference(kind: str, d: int = 32, d_sae: int = 48):
    from sae_lens import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        JumpReLUTranscoder,
        JumpReLUTranscoderConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
        Transcoder,
        TranscoderConfig,
    )

    meta = {"hook_name": "blocks.3.hook_resid_post", "model_name": "m"}
    if kind == "standard":
        sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=d_sae))
    elif kind == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d, d_sae=d_sae))
    elif kind == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=d, d_sae=d_sae, k=5))
    elif kind == "topk-rescaled":
        sae = TopKSAE(TopKSAEConfig(d_in=d, d_sae=d_sae, k=5, rescale_acts_by_decoder_norm=True))
    elif kind == "transcoder":
        sae = Transcoder(TranscoderConfig(d_in=d, d_sae=d_sae, d_out=24, apply_b_dec_to_input=False))
    elif kind == "jumprelu_transcoder":
        sae = JumpReLUTranscoder(JumpReLUTranscoderConfig(d_in=d, d_sae=d_sae, d_out=24, apply_b_dec_to_input=False))
    else:
        raise AssertionError(kind)
    for key, value in meta.items():
        sae.cfg.metadata[key] = value
    _randomise(sae, hash(kind) % 1000)
    return sae


@pytest.mark.parametrize("kind", ["standard", "jumprelu", "topk", "topk-rescaled", "transcoder",
                                  "jumprelu_transcoder"])
def test_saelens_saved_sae_loads_in_arclens(kind, tmp_path):
    sae = _saelens_inference(kind)
    sae.save_model(str(tmp_path / kind))
    _compare(str(tmp_path / kind), _inputs(32, seed=1))


def _saelens_trained(arch: str, d: int, d_sae: int, x: np.ndarray):
    """An SAE trained by SAELens's own SAETrainer for a few steps, as SAELens users get it."""
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    cls, cfg_cls, extra = {
        "topk": (TopKTrainingSAE, TopKTrainingSAEConfig, {"k": 4}),
        "batchtopk": (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, {"k": 4}),
        "jumprelu": (JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig, {"l0_coefficient": 0.01}),
        "standard": (StandardTrainingSAE, StandardTrainingSAEConfig, {"l1_coefficient": 0.01}),
    }[arch]
    sae = cls(cfg_cls(d_in=d, d_sae=d_sae, **extra))
    sae.cfg.metadata.hook_name = "blocks.0.hook_resid_post"
    batches = torch.from_numpy(x).split(256)

    def provider():
        while True:
            yield from batches

    cfg = SAETrainerConfig(total_training_samples=256 * 12, train_batch_size_samples=256, lr=3e-3, lr_end=3e-3,
                           device="cpu")
    SAETrainer(cfg=cfg, sae=sae, data_provider=provider()).fit()
    return sae


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "standard"])
def test_sae_trained_by_saelens_loads_in_arclens(arch, planted_small, tmp_path):
    import arclens

    store = arclens.open_store(planted_small[0])
    x = next(iter(store.batches(store.hooks[0], batch_size=3072, shuffle=False)))
    sae = _saelens_trained(arch, store.d_model, 48, np.asarray(x, np.float32))
    sae.save_inference_model(str(tmp_path / arch))
    cfg = json.loads((tmp_path / arch / "cfg.json").read_text())
    assert cfg["architecture"] == {"batchtopk": "jumprelu"}.get(arch, arch)
    _compare(str(tmp_path / arch), np.asarray(x[:64], np.float32))
