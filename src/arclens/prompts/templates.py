"""arc24's prompt texts (ironbar/arc24, scripts/arc24/prompting.py), character for character.

The strings are written line by line with explicit "\\n" so that the trailing spaces of arc24's v0
system prompt survive editors and formatters. They are Jinja templates rendered with jinja2's
defaults, exactly as arc24 renders them (`jinja2.Template(...)`: no autoescape, no trim_blocks, and
the template's final newline dropped).

Only the versions whose prompts are made of grids alone are here; arc24's code-, selection- and
verification-prompts need task fields (code, answer choices) that ARC tasks do not have.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import jinja2

from arclens.errors import UserError

SYSTEM_V0 = (
    "You are a helpful AI assistant. Your job is to solve tasks from the Abstraction and Reasoning Challenge (ARC). \n"
    "The user will present you with sample input and output grids for each task. \n"
    "Your job will be to understand the transformation between the input and the output and apply it to the last input grid given by the user. \n"
    "The puzzle-like inputs and outputs present a grid where each square can be one of ten colors. A grid can be any height or width between 1x1 and 30x30.\n"
    "The background of the grid is typically colored with 0.\n"
    "The tasks from ARC are based on the following priors:\n"
    "\n"
    "- Objectness: Objects persist and cannot appear or disappear without reason. Objects can interact or not depending on the circumstances.\n"
    '- Goal-directed: Objects can be animate or inanimate. Some objects are "agents" - they have intentions and they pursue goals.\n'
    "- Numbers & counting: Objects can be counted or sorted by their shape, appearance, or movement using basic mathematics like addition, subtraction, and comparison.\n"
    "- Basic geometry & topology: Objects can be shapes like rectangles, triangles, and circles which can be mirrored, rotated, translated, deformed, combined, repeated, etc. Differences in distances can be detected.\n"
    "\n"
    "The transformations between input and output should be based on these priors.\n"
)
SYSTEM_V1 = "You are a helpful assistant."
PROMPT_TEMPLATE_V0 = (
    "Let's see if you can solve this simple ARC task. These are some input-output grid examples that define the task.\n"
    "{% for sample in train_samples %}\n"
    "## Example {{ loop.index }}\n"
    "\n"
    "### Input\n"
    "\n"
    "{{ sample.input }}\n"
    "\n"
    "### Output\n"
    "\n"
    "{{ sample.output }}\n"
    "{% endfor %}\n"
    "## Test case\n"
    "\n"
    "### Input\n"
    "\n"
    "{{ test_input }}\n"
)
ANSWER_TEMPLATE_V0 = "### Output\n\n{{ output }}"
PROMPT_TEMPLATE_V1 = (
    "Let's see if you can solve this simple Abstraction and Reasoning Challenge (ARC) task.\n"
    "Below there are some input-output grid examples that define the task.\n"
    "Your job is to understand the transformation between the input and the output and apply it to the test input grid.\n"
    "The transformations are always based on the following priors: objectness, goal-directed, numbers & counting, and basic geometry & topology.\n"
    "{% for sample in train_samples %}\n"
    "## Example {{ loop.index }}\n"
    "\n"
    "### Input\n"
    "\n"
    "{{ sample.input }}\n"
    "\n"
    "### Output\n"
    "\n"
    "{{ sample.output }}\n"
    "{% endfor %}\n"
    "## Test case\n"
    "\n"
    "### Input\n"
    "\n"
    "{{ test_input }}\n"
)
PROMPT_TEMPLATE_INPUT_FROM_INPUTS_V0 = (
    "Your task is to create a new grid that follows the same distribution as the input grids from the Abstraction and Reasoning Challenge (ARC).\n"
    "Below there are some grid examples, please create a new and different grid that follows the same distribution.\n"
    "{% for sample in train_samples %}\n"
    "## Grid example {{ loop.index }}\n"
    "\n"
    "{{ sample.input }}\n"
    "{% endfor %}\n"
)
ANSWER_TEMPLATE_INPUT_FROM_INPUTS_V0 = "## New grid\n\n{{ output }}"
PROMPT_TEMPLATE_OUTPUT_FROM_OUTPUTS_V0 = (
    "Your task is to create a new grid that follows the same distribution as the input grids from the Abstraction and Reasoning Challenge (ARC).\n"
    "Below there are some grid examples, please create a new and different grid that follows the same distribution.\n"
    "{% for sample in train_samples %}\n"
    "## Grid example {{ loop.index }}\n"
    "\n"
    "{{ sample.output }}\n"
    "{% endfor %}\n"
)


@dataclass(frozen=True)
class PromptVersion:
    name: str
    system: str
    user_template: str
    answer_template: str
    # What a training prompt (--with-answer) puts in the answer: the test "output" or "input".
    answer_grid: str

    @cached_property
    def user(self) -> jinja2.Template:
        return jinja2.Template(self.user_template)

    @cached_property
    def answer(self) -> jinja2.Template:
        return jinja2.Template(self.answer_template)


PROMPT_VERSIONS: dict[str, PromptVersion] = {
    v.name: v
    for v in (
        PromptVersion("output-from-examples-v0", SYSTEM_V0, PROMPT_TEMPLATE_V0, ANSWER_TEMPLATE_V0, "output"),
        PromptVersion("output-from-examples-v1", SYSTEM_V1, PROMPT_TEMPLATE_V1, ANSWER_TEMPLATE_V0, "output"),
        PromptVersion(
            "input-from-inputs-v0",
            SYSTEM_V1,
            PROMPT_TEMPLATE_INPUT_FROM_INPUTS_V0,
            ANSWER_TEMPLATE_INPUT_FROM_INPUTS_V0,
            "input",
        ),
        PromptVersion(
            "output-from-outputs-v0",
            SYSTEM_V1,
            PROMPT_TEMPLATE_OUTPUT_FROM_OUTPUTS_V0,
            ANSWER_TEMPLATE_INPUT_FROM_INPUTS_V0,  # arc24 reuses the "## New grid" answer here
            "output",
        ),
    )
}


def get_prompt_version(name: str) -> PromptVersion:
    try:
        return PROMPT_VERSIONS[name]
    except KeyError:
        raise UserError(f"--prompt-version {name!r}: expected one of {', '.join(PROMPT_VERSIONS)}") from None
