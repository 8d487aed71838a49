"""arclens: ARC-AGI tasks -> Qwen2.5 activations (JAX) -> safetensors stores for SAE training."""

from arclens._version import __version__

__all__ = ["__version__", "open_store"]


def open_store(dest: str, **kwargs):
    """Open an activation store (local path or fsspec URL) for reading. See SPEC.md section 4."""
    # Imported lazily so that `import arclens` stays cheap and never imports JAX.
    from arclens.store.reader import open_store as _open_store

    return _open_store(dest, **kwargs)
