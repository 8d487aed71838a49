"""`arclens random-model`: a RANDOM Qwen2 checkpoint that transformers loads as Qwen2.5-like.

Only the tiny preset is written here; the real-size presets are checked through their config
on torch's meta device (no memory), against the published parameter counts of Qwen2.5.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from arclens.cli import main
from arclens.model.random_checkpoint import PRESETS, _hf_config, write_random_model

QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def test_config_says_random(tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["arclens_random"] is True and "RANDOM" in config["arclens_note"]
    assert config["model_type"] == "qwen2" and config["architectures"] == ["Qwen2ForCausalLM"]
    assert "RANDOM" in (tiny_model_dir / "README.md").read_text()


def test_every_digit_is_its_own_token(tokenizer):
    text = "0123456789\n12 345\n| 9 8 7 |\n[[0, 10], [99, 100]]\nshape: 30x12"
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    for tok in tokens:
        digits = [ch for ch in tok if ch.isdigit()]
        assert len(digits) <= 1 and (not digits or tok == digits[0]), tok
    assert sum(t.isdigit() for t in tokens) == sum(ch.isdigit() for ch in text)


def test_special_tokens(tokenizer):
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    ids = tokenizer.convert_tokens_to_ids(specials)
    assert len(set(ids)) == 3 and tokenizer.unk_token_id not in ids
    for tok, i in zip(specials, ids):
        assert tokenizer(tok)["input_ids"] == [i]  # never split
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None  # Qwen prepends nothing
    assert tokenizer("12")["input_ids"] == tokenizer.convert_tokens_to_ids(["1", "2"])


def test_chat_template_renders_like_qwen25(tiny_model_dir, tokenizer):
    assert "chat_template" in json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    user = [{"role": "user", "content": "Solve 12"}]
    assert tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True) == (
        f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nSolve 12<|im_end|>\n<|im_start|>assistant\n"
    )
    convo = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
    ]
    assert tokenizer.apply_chat_template(convo, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
    )


def test_transformers_loads_the_model_and_runs(tiny_model_dir, tokenizer):
    torch = pytest.importorskip("torch")
    from transformers import Qwen2ForCausalLM

    model, info = Qwen2ForCausalLM.from_pretrained(str(tiny_model_dir), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert (
        model.config.tie_word_embeddings
        and model.config.num_hidden_layers == PRESETS["tiny"].num_hidden_layers
    )
    ids = tokenizer("12\n34", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], PRESETS["tiny"].vocab_size) and torch.isfinite(logits).all()


def test_sharded_output_has_index_and_loads_the_same(tmp_path, tiny_model_dir):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file
    from transformers import Qwen2ForCausalLM

    sharded = write_random_model(tmp_path / "sharded", preset="tiny", seed=0, max_shard_bytes=100_000)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and not (sharded / "model.safetensors").exists()
    tensors = {}
    for name in files:
        shard = load_file(str(sharded / name))
        assert all(index["weight_map"][k] == name for k in shard)
        tensors.update(shard)
    assert set(tensors) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in tensors.values())
    single = load_file(str(tiny_model_dir / "model.safetensors"))  # same seed: same weights
    assert set(single) == set(tensors) and all(np.array_equal(single[k], tensors[k]) for k in single)

    model, info = Qwen2ForCausalLM.from_pretrained(str(sharded), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ref = Qwen2ForCausalLM.from_pretrained(str(tiny_model_dir))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)


def test_cli_writes_and_refuses_a_non_empty_dir(tmp_path, capsys):
    dest = tmp_path / "m"
    assert main(["random-model", str(dest), "--preset", "tiny", "--seed", "3"]) == 0
    assert "RANDOM" in capsys.readouterr().out
    assert (dest / "model.safetensors").exists()
    assert main(["random-model", str(dest)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(dest) in err[0] and "not empty" in err[0]


def test_seed_changes_weights(tmp_path, tiny_model_dir):
    from safetensors.numpy import load_file

    other = load_file(str(write_random_model(tmp_path / "s1", seed=1) / "model.safetensors"))
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    assert not np.array_equal(other["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


# Published sizes of Qwen2.5 (model cards; tied embeddings counted once).
PUBLISHED_PARAMS = {"0.5b": 494_032_768, "1.5b": 1_543_714_304, "7b": 7_615_616_512}


@pytest.mark.parametrize("preset", list(PUBLISHED_PARAMS))
def test_real_size_presets_match_qwen25(preset, tokenizer):
    torch = pytest.importorskip("torch")
    from transformers import Qwen2Config, Qwen2ForCausalLM

    spec = PRESETS[preset]
    config = _hf_config(spec, tokenizer, spec.dtype)
    assert config["rope_theta"] == 1e6 and config["rms_norm_eps"] == 1e-6 and config["arclens_random"] is True
    with torch.device("meta"):  # shapes only, no memory
        model = Qwen2ForCausalLM(Qwen2Config(**config))
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS[preset]
    assert model.config.tie_word_embeddings == (preset != "7b")
