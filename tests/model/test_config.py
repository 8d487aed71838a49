"""QwenConfig from config.json: both rope_theta places, dtype names, head_dim, refusals, presets."""

from __future__ import annotations

import json

import pytest

from arclens.errors import UserError
from arclens.model.config import PRESETS, QwenConfig
from arclens.model.random_checkpoint import PRESETS as RANDOM_PRESETS

# The layout of Qwen/Qwen2.5-0.5B's published config.json (transformers 4.x era: rope_theta and
# torch_dtype at the top level, a sliding_window value that is not in use).
QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "hidden_act": "silu",
    "hidden_size": 896,
    "initializer_range": 0.02,
    "intermediate_size": 4864,
    "max_position_embeddings": 32768,
    "max_window_layers": 24,
    "model_type": "qwen2",
    "num_attention_heads": 14,
    "num_hidden_layers": 24,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.40.1",
    "use_cache": True,
    "use_mrope": False,
    "use_sliding_window": False,
    "vocab_size": 151936,
}


def cfg(**changes):
    d = dict(QWEN25_05B)
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    return QwenConfig.from_hf_dict(d)


def test_real_qwen25_config_is_the_preset():
    c = cfg()
    assert c == QwenConfig.preset("0.5b") == PRESETS["0.5b"]
    assert (c.head_dim, c.q_per_kv, c.rope_theta, c.dtype) == (64, 7, 1e6, "bfloat16")


def test_transformers5_layout():
    """transformers 5.x writes rope_parameters and dtype instead."""
    c = cfg(rope_theta=None, torch_dtype=None, rope_parameters={"rope_theta": 12345.0, "rope_type": "default"},
            dtype="float32", layer_types=["full_attention"] * 24)
    assert c.rope_theta == 12345.0 and c.dtype == "float32"


def test_explicit_head_dim_and_default_kv_heads():
    c = cfg(head_dim=128, num_key_value_heads=None)
    assert c.head_dim == 128 and c.num_key_value_heads == 14


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_type": "llama"}, "model_type='llama' is not supported"),
        ({"architectures": ["Qwen2ForSequenceClassification"]}, "architectures=.* is not supported"),
        ({"use_sliding_window": True}, "use_sliding_window=true is not supported"),
        ({"layer_types": ["sliding_attention"] * 24}, "layer_types .*sliding_attention.* not supported"),
        ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope type 'yarn'"),
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6}}, "rope type 'linear'"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads=3"),
        ({"hidden_size": 900}, "not divisible by num_attention_heads"),
        ({"vocab_size": None}, "missing 'vocab_size'"),
        ({"num_hidden_layers": -1}, "num_hidden_layers=-1; expected a positive integer"),
        ({"torch_dtype": "int8"}, "dtype='int8'"),
    ],
)
def test_refusals(changes, message):
    with pytest.raises(UserError, match=message):
        cfg(**changes)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(UserError, match="no such model directory"):
        QwenConfig.from_pretrained(tmp_path / "missing")
    with pytest.raises(UserError, match="no config.json"):
        QwenConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read model config"):
        QwenConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(QWEN25_05B))
    assert QwenConfig.from_pretrained(tmp_path) == PRESETS["0.5b"]


def test_presets_agree_with_random_model_presets():
    for name in ("0.5b", "1.5b", "7b"):
        ours, rnd = PRESETS[name], RANDOM_PRESETS[name]
        assert (ours.hidden_size, ours.num_hidden_layers, ours.num_attention_heads, ours.num_key_value_heads,
                ours.intermediate_size, ours.vocab_size, ours.tie_word_embeddings) == (
            rnd.hidden_size, rnd.num_hidden_layers, rnd.num_attention_heads, rnd.num_key_value_heads,
            rnd.intermediate_size, rnd.vocab_size, rnd.tie_word_embeddings)
    assert PRESETS["3b"].head_dim == 128 and not PRESETS["7b"].tie_word_embeddings
    with pytest.raises(UserError, match="not one of"):
        QwenConfig.preset("70b")


def test_config_is_hashable_and_json_round_trips():
    c = PRESETS["7b"]
    assert hash(c) == hash(QwenConfig(**c.to_json()))
    assert json.loads(json.dumps(c.to_json()))["num_key_value_heads"] == 4
