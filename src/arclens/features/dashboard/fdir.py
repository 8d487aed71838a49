"""Reading a features folder (FDIR, docs/FEATURES.md) for the dashboard and the figures.

Only a folder that `arclens features` wrote is accepted: `features.json` must say
`"format": "arclens-features"`, version 1, and the other files must be there. Anything else is one
UserError naming the file and what was expected. The big files (`examples.jsonl`,
`samples.jsonl`) are streamed line by line, never loaded whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arclens.errors import UserError

FORMAT, VERSION = "arclens-features", 1
FILES = ("features.json", "latents.safetensors", "examples.jsonl", "samples.jsonl")


@dataclass
class FeatureDir:
    path: Path
    index: dict  # features.json

    @property
    def d_sae(self) -> int:
        return len(self.index["latents"])

    def histograms(self) -> tuple[np.ndarray, np.ndarray]:
        """(edges [E], counts [d_sae, E+1]) as docs/FEATURES.md lays them out."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        f = self.path / "latents.safetensors"
        try:
            arrays = load_file(str(f))
        except (OSError, SafetensorError) as err:
            raise UserError(f"{f}: not a readable safetensors file ({err})") from None
        edges, counts = arrays.get("hist_edges"), arrays.get("hist_counts")
        if edges is None or counts is None or counts.shape != (self.d_sae, len(edges) + 1):
            raise UserError(f"{f}: expected hist_edges [E] and hist_counts [{self.d_sae}, E+1] "
                            "(docs/FEATURES.md)")
        return edges, counts

    def _lines(self, name: str) -> Iterator[dict]:
        f = self.path / name
        with open(f, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    raise UserError(f"{f} line {n}: not JSON") from None
                if not isinstance(obj, dict):
                    raise UserError(f"{f} line {n}: expected a JSON object")
                yield obj

    def samples(self) -> Iterator[dict]:
        for s in self._lines("samples.jsonl"):
            if not isinstance(s.get("key"), str) or not isinstance(s.get("grids"), list):
                raise UserError(f"{self.path / 'samples.jsonl'}: a line without key and grids")
            yield s

    def examples_by_latent(self) -> Iterator[tuple[int, list[dict]]]:
        """(latent, its examples) in latent order; examples.jsonl is ordered by latent."""
        current, group, seen = None, [], set()
        for ex in self._lines("examples.jsonl"):
            latent = ex.get("latent")
            if not isinstance(latent, int) or not 0 <= latent < self.d_sae:
                raise UserError(f"{self.path / 'examples.jsonl'}: latent {latent!r} is not in 0..{self.d_sae - 1}")
            if latent != current:
                if current is not None:
                    yield current, group
                if latent in seen:
                    raise UserError(f"{self.path / 'examples.jsonl'}: not ordered by latent (latent {latent} "
                                    "appears twice apart)")
                seen.add(latent)
                current, group = latent, []
            group.append(ex)
        if current is not None:
            yield current, group


def open_fdir(path) -> FeatureDir:
    """The FDIR at ``path``, checked to be `arclens features` output (else one UserError)."""
    p = Path(path)
    what = "a folder written by `arclens features`"
    if not p.is_dir():
        raise UserError(f"{p}: no such folder; expected {what}")
    f = p / "features.json"
    try:
        index = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{p}: no features.json; expected {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{f}: cannot read it as JSON ({err}); expected {what}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise UserError(f"{f}: format is not {FORMAT!r}; expected {what}")
    if index.get("version") != VERSION:
        raise UserError(f"{f}: version {index.get('version')!r}; this dashboard reads version {VERSION}")
    latents = index.get("latents")
    if not isinstance(latents, list) or any(not isinstance(r, dict) or r.get("latent") != i
                                            for i, r in enumerate(latents)):
        raise UserError(f"{f}: latents must be one row per latent, in latent order")
    for name in FILES[1:]:
        if not (p / name).is_file():
            raise UserError(f"{p}: no {name}; expected {what}")
    return FeatureDir(p, index)
