"""The distributed side of reldrop: shards over fsspec, Ray Data explainer stage, weight store,
Ray Train trainer. Import submodules directly (``reldrop.pipeline.data.shards``, ``reldrop.pipeline.training.driver``, ...);
this package imports nothing heavy on its own."""
