"""`arclens random-model`: a RANDOM-weight Qwen2 checkpoint in Hugging Face layout.

For demos, tests and cluster smoke tests on machines that cannot reach the hub. It writes
`config.json` (marked random), safetensors weights made with numpy (arclens never needs torch),
and a tokenizer that behaves like Qwen2.5's where it matters to ARC prompts: byte-level BPE,
Qwen's pre-tokenizer regex (so every digit is its own token), the `<|endoftext|>`,
`<|im_start|>`, `<|im_end|>` specials, and Qwen2.5's chat template. Its vocabulary is small and
trained on ARC-like text, so ids differ from the real Qwen tokenizer's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arclens.errors import UserError

RANDOM_NOTE = "RANDOM WEIGHTS written by `arclens random-model`: activations mean nothing about any trained model."

# Qwen2's pre-tokenizer pattern (tokenizer.json of every Qwen2/2.5 model): \p{N} matches one digit.
QWEN_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# Qwen2.5's chat template, verbatim (Qwen/Qwen2.5-*-Instruct tokenizer_config.json).
QWEN25_CHAT_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


@dataclass(frozen=True)
class Preset:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    dtype: str


# The real shapes of Qwen2.5 (NOTES.md), plus a tiny one for CPU tests and demos.
PRESETS = {
    "tiny": Preset(64, 4, 4, 2, 128, 1024, True, "float32"),
    "0.5b": Preset(896, 24, 14, 2, 4864, 151936, True, "bfloat16"),
    "1.5b": Preset(1536, 28, 12, 2, 8960, 151936, True, "bfloat16"),
    "7b": Preset(3584, 28, 28, 4, 18944, 152064, False, "bfloat16"),
}

TOKENIZER_VOCAB = 800  # byte alphabet + merges learnt from ARC-like text; specials come after
MAX_SHARD_BYTES = 2 << 30


def _training_corpus() -> list[str]:
    """ARC-flavoured text: arc24's prompt words, markdown, and grids printed several ways."""
    rng = np.random.default_rng(1234)
    words = (
        "You are a helpful assistant that observes input-output pairs and learns the transformation "
        "rule. Let's see if you can solve this simple Abstraction and Reasoning Challenge (ARC) task. "
        "Below there are some input-output grid examples that define the task. Your job is to "
        "understand the transformation between the input and the output and apply it to the last "
        "input grid given to you. The output should be a grid of numbers. Here are some examples "
        "of the task. Example Input Output Test Now predict the output for the following input "
        "shape rows columns grid code block the same as in the examples. Qwen Alibaba Cloud system "
        "user assistant"
    )
    texts = [words, words.lower(), "### Input\n\n```grid\n", "### Output\n\n```grid\n", "## Example 1\n\n"]
    for _ in range(200):
        h, w = rng.integers(1, 12, size=2)
        grid = rng.integers(0, 10, size=(h, w))
        rows = ["".join(map(str, r)) for r in grid]
        texts.append("\n".join(rows))
        texts.append("\n".join(f"{i + 1} {r}" for i, r in enumerate(rows)))
        texts.append(f"shape: {h}x{w}\n" + "\n".join(" ".join(r) for r in rows))
        texts.append("[" + ", ".join("[" + ", ".join(r) + "]" for r in rows) + "]")
    return texts


def build_tokenizer():
    """A Qwen2.5-like byte-level BPE tokenizer wrapped for transformers (with its chat template)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(_training_corpus(), trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))  # appended after the learnt vocabulary, as in Qwen
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        chat_template=QWEN25_CHAT_TEMPLATE,
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        tokenizer_class="Qwen2Tokenizer",
    )


def _hf_config(preset: Preset, tokenizer, dtype: str) -> dict:
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "attention_dropout": 0.0,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "hidden_act": "silu",
        "hidden_size": preset.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": preset.intermediate_size,
        "max_position_embeddings": 32768,
        "max_window_layers": preset.num_hidden_layers,
        "num_attention_heads": preset.num_attention_heads,
        "num_hidden_layers": preset.num_hidden_layers,
        "num_key_value_heads": preset.num_key_value_heads,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "use_sliding_window": False,
        "tie_word_embeddings": preset.tie_word_embeddings,
        "torch_dtype": dtype,
        "use_cache": True,
        "vocab_size": preset.vocab_size,
        "arclens_random": True,
        "arclens_note": RANDOM_NOTE,
    }


def _random_tensors(preset: Preset, rng: np.random.Generator, np_dtype):
    """Yield (name, array) in HF Qwen2 naming; one tensor at a time so 7B never sits in memory."""
    d, f, v = preset.hidden_size, preset.intermediate_size, preset.vocab_size
    hd = d // preset.num_attention_heads
    q, kv = preset.num_attention_heads * hd, preset.num_key_value_heads * hd

    def normal(*shape, std=0.02):
        return (rng.standard_normal(shape, dtype=np.float32) * std).astype(np_dtype)

    def norm_weight():  # not exactly 1, so a missing norm weight shows up in the equivalence tests
        return (1.0 + rng.standard_normal(d, dtype=np.float32) * 0.1).astype(np_dtype)

    yield "model.embed_tokens.weight", normal(v, d)
    for i in range(preset.num_hidden_layers):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", norm_weight()
        yield p + "self_attn.q_proj.weight", normal(q, d)
        yield p + "self_attn.q_proj.bias", normal(q)
        yield p + "self_attn.k_proj.weight", normal(kv, d)
        yield p + "self_attn.k_proj.bias", normal(kv)
        yield p + "self_attn.v_proj.weight", normal(kv, d)
        yield p + "self_attn.v_proj.bias", normal(kv)
        yield p + "self_attn.o_proj.weight", normal(d, q)
        yield p + "post_attention_layernorm.weight", norm_weight()
        yield p + "mlp.gate_proj.weight", normal(f, d)
        yield p + "mlp.up_proj.weight", normal(f, d)
        yield p + "mlp.down_proj.weight", normal(d, f)
    yield "model.norm.weight", norm_weight()
    if not preset.tie_word_embeddings:
        yield "lm_head.weight", normal(v, d)


def _write_weights(out: Path, preset: Preset, seed: int, dtype: str, max_shard_bytes: int) -> None:
    import ml_dtypes
    from safetensors.numpy import save_file

    np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}[dtype]
    rng = np.random.default_rng(seed)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, arr in _random_tensors(preset, rng, np_dtype):
        if size and size + arr.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = arr
        size += arr.nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata=meta)
        return
    n = len(shards)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file(shard, str(out / fname), metadata=meta)
        for k, a in shard.items():
            weight_map[k] = fname
            total += a.nbytes
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )


def write_random_model(
    dest: str | os.PathLike,
    preset: str = "tiny",
    seed: int = 0,
    dtype: str | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """Write a random checkpoint to ``dest``; returns the directory. Weights above
    ``max_shard_bytes`` are split into HF-style shards with a ``model.safetensors.index.json``."""
    if preset not in PRESETS:
        raise UserError(f"--preset: {preset!r} is not one of {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    dtype = dtype or spec.dtype
    out = Path(dest)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: directory exists and is not empty; random-model writes into a new directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out}: cannot create directory ({e.strerror})") from None
    tokenizer = build_tokenizer()
    if len(tokenizer) > spec.vocab_size:
        raise AssertionError("tokenizer larger than the preset's vocabulary")
    # The chat template goes into tokenizer_config.json, where Qwen2.5 ships it and every
    # transformers version reads it (5.x would otherwise write only chat_template.jinja).
    tokenizer.save_pretrained(str(out), save_jinja_files=False)
    config = _hf_config(spec, tokenizer, dtype)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    eos = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": eos[1], "eos_token_id": eos, "pad_token_id": eos[1], "do_sample": False}, indent=2)
    )
    _write_weights(out, spec, seed, dtype, max_shard_bytes)
    (out / "README.md").write_text(f"# {RANDOM_NOTE}\n\npreset `{preset}`, seed {seed}, dtype {dtype}.\n")
    return out


def main(args) -> int:
    out = write_random_model(args.dir, args.preset, args.seed, args.dtype)
    print(f"wrote {out} (preset {args.preset}, seed {args.seed}) -- {RANDOM_NOTE}")
    return 0
