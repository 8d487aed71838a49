"""arc24's prompts (ironbar/arc24, ARC Prize 2024): encoders, prompt versions through the chat
template, test-time augmentation, token roles, and the output side (parsing, voting).

See docs/PROMPTS.md for what is faithful to arc24 and how it is checked.
"""

from arclens.prompts.augmentation import Augmentation, plan_augmentations, task_seed
from arclens.prompts.encoders import GridEncoder, GridParseError
from arclens.prompts.expression import create_grid_encoder
from arclens.prompts.output import Prediction, output_token_roles, parse_grid, validate_grid, vote
from arclens.prompts.render import (
    DEFAULT_ENCODER,
    DEFAULT_PROMPT_VERSION,
    PromptConfig,
    Sample,
    load_tokenizer,
    render_samples,
    sample_key,
)
from arclens.prompts.templates import PROMPT_VERSIONS

__all__ = [
    "DEFAULT_ENCODER",
    "DEFAULT_PROMPT_VERSION",
    "PROMPT_VERSIONS",
    "Augmentation",
    "GridEncoder",
    "GridParseError",
    "Prediction",
    "PromptConfig",
    "Sample",
    "create_grid_encoder",
    "load_tokenizer",
    "output_token_roles",
    "parse_grid",
    "plan_augmentations",
    "render_samples",
    "sample_key",
    "task_seed",
    "validate_grid",
    "vote",
]
