"""arclens.store: the activation store, format v1 (SPEC.md section 3; docs/STORE.md).

Writers: ``open_or_create_store``, ``StoreWriter``, ``committed_keys`` (arclens.store.writer).
Readers: ``open_store`` (arclens.store.reader, also ``arclens.open_store``). Nothing here is
imported eagerly, so ``import arclens.store`` stays cheap.
"""
