"""The distributed side of reldrop: shards over fsspec, Ray Data explainer stage, weight store,
Ray Train trainer. Import submodules directly (``pipeline.shards``, ``pipeline.train``, ...);
this package imports nothing heavy on its own."""
