"""System + user + assistant messages through the tokenizer's own chat template, as arc24 does.

arc24 renders the whole conversation with `apply_chat_template(..., add_generation_prompt=False)`,
the assistant message being "### Output\\n\\n```grid" for inference, and then cuts the text at the
last end-of-turn marker of the template (`remove_assistant_ending`). Training prompts keep the
answer grid and the closing tokens.

We render a *skeleton* once per (prompt version, number of train examples, form): the same
conversation with a placeholder where each grid goes. Splitting it at the placeholders gives text
pieces and grid numbers, so a prompt is the pieces joined with the grid texts, and every grid's
character offset is known exactly. The skeleton is shared by all test inputs and augmentations
of every task with that many examples.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import jinja2

from arclens.errors import UserError
from arclens.prompts.templates import PromptVersion

# arc24's remove_assistant_ending, in its order of checks: llama 3, Qwen (ChatML), phi-3.
END_OF_TURN_MARKERS = ("<|eot_id|>", "<|im_end|>", "<|end|>")
INFERENCE_ANSWER = "```grid"  # what arc24 puts in the assistant message of an inference prompt

_PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")


def placeholder(grid_number: int) -> str:
    return f"\ue000{grid_number}\ue001"


@dataclass(frozen=True)
class Skeleton:
    """Text pieces around grid slots: texts[0] + grid[slots[0]] + texts[1] + ... + texts[-1]."""

    texts: tuple[str, ...]
    slots: tuple[int, ...]  # grid numbers (SPEC.md section 3), in order of appearance
    n_train: int
    with_answer: bool


def grid_numbers(n_train: int) -> dict[str, int]:
    """SPEC.md section 3: example i input = 2i, output = 2i+1, test input = 2n, test output = 2n+1."""
    return {"test_input": 2 * n_train, "test_output": 2 * n_train + 1}


def answer_grid_number(version: PromptVersion, n_train: int) -> int:
    """The number of the answer grid: the grid a training prompt (--with-answer) appends, which is
    the test output, or the test input for input-from-inputs-v0. A generated answer's cells carry
    the number the same grid has at the same place of a training prompt."""
    return grid_numbers(n_train)[f"test_{version.answer_grid}"]


def remove_assistant_ending(text: str, tokenizer_name: str = "tokenizer") -> str:
    """Cut at the last end-of-turn marker, as arc24 does (arc24 fails obscurely on unknown ones)."""
    for marker in END_OF_TURN_MARKERS:
        if marker in text:
            return text[: text.rfind(marker)]
    raise UserError(
        f"{tokenizer_name}: unknown chat template; arc24's prompts know the end-of-turn markers "
        f"{', '.join(END_OF_TURN_MARKERS)} (llama 3, Qwen, phi-3) and this template uses none"
    )


def _chat_text(tokenizer, version: PromptVersion, train_samples, test_input, output, with_answer) -> str:
    """arc24's create_prompts_from_task for one test input, with the given grid texts."""
    user = version.user.render(train_samples=train_samples, test_input=test_input)
    assistant = version.answer.render(output=output)
    messages = [
        {"role": "system", "content": version.system},
        {"role": "user", "content": user},
        {"role": "assistant", "content": assistant},
    ]
    name = getattr(tokenizer, "name_or_path", None) or "tokenizer"
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{name}: the tokenizer has no chat template; arc24's prompts need one")
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    except (jinja2.TemplateError, ValueError, TypeError, KeyError) as err:  # the model's template's fault
        raise UserError(f"{name}: its chat template failed on arc24's messages: {err}") from None
    return text if with_answer else remove_assistant_ending(text, name)


def render_skeleton(tokenizer, version: PromptVersion, n_train: int, with_answer: bool) -> Skeleton:
    numbers = grid_numbers(n_train)
    train_samples = [{"input": placeholder(2 * i), "output": placeholder(2 * i + 1)} for i in range(n_train)]
    test_input = placeholder(numbers["test_input"])
    output = placeholder(answer_grid_number(version, n_train)) if with_answer else INFERENCE_ANSWER
    text = _chat_text(tokenizer, version, train_samples, test_input, output, with_answer)
    pieces = _PLACEHOLDER.split(text)
    texts, slots = tuple(pieces[0::2]), tuple(int(p) for p in pieces[1::2])
    expected = version.user.render(
        train_samples=train_samples, test_input=test_input
    ) + version.answer.render(output=output)
    if slots != tuple(int(p) for p in _PLACEHOLDER.findall(expected)) or any(
        "\ue000" in t or "\ue001" in t for t in texts
    ):
        raise _changes_contents(tokenizer)
    return Skeleton(texts, slots, n_train, with_answer)


def check_against_direct_render(
    tokenizer, version: PromptVersion, skeleton: Skeleton, grid_texts: dict, text: str
):
    """Render one prompt the way arc24 does, with the grid texts inside the messages, and compare
    it with the skeleton's assembly `text`: catches templates that transform contents (`| upper`)."""
    n = skeleton.n_train
    train_samples = [
        {"input": grid_texts.get(2 * i, ""), "output": grid_texts.get(2 * i + 1, "")} for i in range(n)
    ]
    test_input = grid_texts.get(2 * n, "")
    if skeleton.with_answer:
        output = grid_texts[answer_grid_number(version, n)]
    else:
        output = INFERENCE_ANSWER
    if _chat_text(tokenizer, version, train_samples, test_input, output, skeleton.with_answer) != text:
        raise _changes_contents(tokenizer)


def _changes_contents(tokenizer) -> UserError:
    name = getattr(tokenizer, "name_or_path", None) or "tokenizer"
    return UserError(
        f"{name}: its chat template changes message contents; arc24's prompts need them verbatim"
    )
