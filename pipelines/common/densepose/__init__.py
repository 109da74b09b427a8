"""DensePose R-50-FPN (detectron2 ``densepose_rcnn_R_50_FPN_s1x``) without detectron2.

Public API (import from the submodules; this package file stays free of torch):

- ``predictor.DensePose.load(source: WeightSource, device="cpu", dtype="float32") -> DensePose``
- ``DensePose.predict(images_bgr: list[np.ndarray], score_thresh, given_boxes=None, max_instances=None)
  -> list[DensePoseResult]``: detectron2 ``DefaultPredictor`` semantics, batched (same padded size
  shares a batch); ``DensePoseResult.labels_uv(i)`` gives an instance's labels (0..24) and raw U/V.
- ``DensePose.catvton_part_maps(images: list[PIL.Image], resize=1024) -> list[PIL.Image]``: CatVTON's
  AutoMasker DensePose map (L, labels 0..24, input size; all zeros when nobody is found).
- ``DensePose.leffa_iuv(images_rgb: list[np.ndarray]) -> list[np.ndarray | None]``: Leffa's pose
  condition, (H, W, 3) uint8 RGB = (U, V, I); None when nobody is found.
- ``products.leffa_condition(iuv) -> torch.Tensor``: the (1, 3, H, W) tensor Leffa's transform makes of it.
- ``convert.convert(src, dst)``: the one-time ``.pkl`` -> safetensors conversion (``weights`` converter
  ``densepose``); serving loads ``weights.locate("densepose", "model")``.
"""
