"""What an SAE training run is: typed settings, the recipe's defaults, and the derived schedules.

``TrainSettings`` is everything that shapes the weights a run ends with. It is compared field by
field when a run resumes (a resume with other settings is refused, naming each field), and it is
written to each SAE's ``arclens.json``. Settings that only change how the run is carried out
(checkpoint interval, mesh, progress) are not part of it.

The recipe (docs/SAE.md says where each step comes from; each has a flag):

- decoder rows unit-norm after every step, the gradient's component parallel to each row removed
  first (``decoder_norm="unit"``; ``"free"`` for ReLU, as Anthropic's April 2024 update trains);
- the encoder starts as the decoder's transpose (``tied_init``);
- ``b_dec`` starts at the geometric median of a sample (``b_dec_init="median"``);
- inputs (and a transcoder's targets) are scaled by one constant each so that E||x||^2 = d
  (``scale_inputs``); the constants are folded into the exported weights;
- AuxK for dead latents (TopK, BatchTopK): k_aux = d_in / 2, coefficient 1/32; a latent is dead
  after ``dead_window`` tokens without firing (10M at full scale, ``tokens / 20`` for short runs);
  up to ``aux_pool`` (4 k_aux) dead latents per step exactly, a rotating window of them beyond;
- Adam (optax), lr = ``LR_AT_16K / sqrt(d_sae / 2**14)``, linear warmup, linear decay to 0 over the
  last 20% of steps;
- float32 parameters whatever the activations' dtype.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

ARCHS = ("topk", "batchtopk", "jumprelu", "relu")

# Peak learning rate for a 2**14-latent dictionary; scaled by 1/sqrt(d_sae / 2**14) (the scaling
# dictionary_learning uses). Chosen on the planted-dictionary stores of tests/support/planted.py
# with inputs scaled to E||x||^2 = d (docs/SAE.md has the sweep): short runs need a larger step
# than dictionary_learning's 2e-4, which assumes hundreds of millions of tokens.
LR_AT_16K = 2.5e-3
WARMUP_FRACTION = 0.02  # of the steps, at most WARMUP_MAX_STEPS
WARMUP_MAX_STEPS = 1000
DECAY_FRACTION = 0.2  # linear decay to 0 over the last 20% of steps
ADAM_B1, ADAM_B2 = 0.9, 0.999
ADAM_EPS = 6.25e-10  # OpenAI's TopK recipe

DEAD_WINDOW_MAX = 10_000_000  # tokens without firing before a latent counts as dead
DEAD_WINDOW_FRACTION = 20  # short runs: tokens / 20
DENSE_FREQUENCY = 0.1  # a latent firing on more than this share of tokens is "dense"
AUX_COEF = 1.0 / 32
BATCHTOPK_CANDIDATES = 4  # per-token candidates for BatchTopK, as a multiple of k
THRESHOLD_EMA = 0.01  # BatchTopK's global threshold: bias-corrected EMA of the smallest kept activation

DEFAULT_L0_COEF = 1.0  # JumpReLU: loss = MSE + coef * L0, MSE summed over d (inputs at E||x||^2 = d), as SAELens
DEFAULT_L1_COEF = 1.0  # ReLU: loss = MSE + coef * sum_i z_i ||W_dec,i||
DEFAULT_BANDWIDTH = 0.05  # JumpReLU straight-through rectangle kernel width, in scaled units
DEFAULT_INIT_THRESHOLD = 0.1  # JumpReLU initial threshold, in scaled units
SPARSITY_WARMUP_FRACTION = 0.05  # L0 / L1 coefficient ramps from 0 over the first 5% of steps
INIT_SAMPLE_TOKENS = 16384  # tokens for the input scale and b_dec's geometric median


@dataclass(frozen=True)
class SAESpec:
    """One dictionary of the run. ``hook_out`` is set for a transcoder."""

    name: str
    hook_in: str
    hook_out: str | None
    arch: str
    d_in: int
    d_out: int
    d_sae: int
    k: int | None = None  # topk, batchtopk
    sparsity_coef: float | None = None  # l0 (jumprelu) or l1 (relu)

    @property
    def is_transcoder(self) -> bool:
        return self.hook_out is not None

    @property
    def target_hook(self) -> str:
        return self.hook_out or self.hook_in


@dataclass(frozen=True)
class Recipe:
    """The recipe's switches and constants (see the module doc); defaults are the recipe."""

    decoder_norm: str | None = None  # "unit" | "free"; None: unit, except free for relu
    tied_init: bool = True
    b_dec_init: str = "median"  # "median" | "mean" | "zeros"
    scale_inputs: bool = True
    aux_k: int | None = None  # None: d_in // 2
    aux_coef: float = AUX_COEF
    aux_pool: int | None = None  # dead latents AuxK computes exactly per step; None: 4 * aux_k
    dead_window: int | None = None  # tokens; None: min(10M, tokens / 20)
    warmup_steps: int | None = None  # None: 2% of steps, at most 1000
    decay_fraction: float = DECAY_FRACTION
    sparsity_warmup_fraction: float = SPARSITY_WARMUP_FRACTION
    bandwidth: float = DEFAULT_BANDWIDTH
    init_threshold: float = DEFAULT_INIT_THRESHOLD
    batchtopk_candidates: int = BATCHTOPK_CANDIDATES

    def decoder_norm_for(self, arch: str) -> str:
        if self.decoder_norm is not None:
            return self.decoder_norm
        return "free" if arch == "relu" else "unit"


@dataclass(frozen=True)
class TrainSettings:
    saes: tuple[SAESpec, ...]
    tokens: int  # training tokens (whole batches)
    batch_tokens: int = 4096
    lr: float | None = None  # None: the recipe's width-scaled default, per SAE
    seed: int = 0
    dtype: str = "float32"  # of the activations fed to the SAEs; parameters are always float32
    shuffle: bool = True  # False: the source's natural order (stored / forward order), for comparisons
    recipe: Recipe = field(default_factory=Recipe)
    source: dict = field(default_factory=dict, compare=False)  # fingerprint of the data source

    @property
    def n_steps(self) -> int:
        return self.tokens // self.batch_tokens

    @property
    def hooks(self) -> tuple[str, ...]:
        """Every hook the run reads, in a fixed order."""
        out: list[str] = []
        for s in self.saes:
            for h in (s.hook_in, s.hook_out):
                if h is not None and h not in out:
                    out.append(h)
        return tuple(out)

    # -- derived schedules ------------------------------------------------------------------

    def lr_for(self, spec: SAESpec) -> float:
        return self.lr if self.lr is not None else default_lr(spec.d_sae)

    def warmup_steps(self) -> int:
        if self.recipe.warmup_steps is not None:
            return max(0, self.recipe.warmup_steps)
        return max(1, min(WARMUP_MAX_STEPS, round(WARMUP_FRACTION * self.n_steps)))

    def decay_steps(self) -> int:
        return max(1, round(self.recipe.decay_fraction * self.n_steps)) if self.recipe.decay_fraction > 0 else 0

    def dead_window(self) -> int:
        if self.recipe.dead_window is not None:
            return self.recipe.dead_window
        return max(self.batch_tokens, min(DEAD_WINDOW_MAX, self.tokens // DEAD_WINDOW_FRACTION))

    def aux_k(self, spec: SAESpec) -> int:
        k = self.recipe.aux_k if self.recipe.aux_k is not None else spec.d_in // 2
        return max(1, min(k, spec.d_sae))

    def sparsity_warmup_steps(self) -> int:
        return max(1, round(self.recipe.sparsity_warmup_fraction * self.n_steps))

    def to_json(self) -> dict:
        """Every field that shapes the weights (the resume check compares these)."""
        d = dataclasses.asdict(self)
        d.pop("source")
        d["saes"] = [dataclasses.asdict(s) for s in self.saes]
        d["source"] = self.source
        return d


def default_lr(d_sae: int) -> float:
    return LR_AT_16K / math.sqrt(d_sae / 2**14)


def lr_at(step, *, peak: float, n_steps: int, warmup: int, decay: int):
    """Linear warmup over ``warmup`` steps, constant, linear decay to 0 over the last ``decay``
    steps. ``step`` may be a traced integer (the schedule runs inside the jitted step)."""
    import jax.numpy as jnp

    t = jnp.asarray(step, jnp.float32)
    up = jnp.minimum(1.0, (t + 1.0) / max(warmup, 1)) if warmup > 0 else 1.0
    down = jnp.clip((n_steps - t) / max(decay, 1), 0.0, 1.0) if decay > 0 else 1.0
    return peak * up * down


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``["field: old -> new", ...]`` for every leaf that differs between two settings dicts."""
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        where = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(differences(a, b, where + "."))
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(
                isinstance(x, dict) for x in a + b):
            for i, (x, y) in enumerate(zip(a, b)):
                out.extend(differences(x, y, f"{where}[{i}]."))
        elif a != b:
            out.append(f"{where}: {a!r} -> {b!r}")
    return out
