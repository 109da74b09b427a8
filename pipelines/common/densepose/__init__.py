"""DensePose R-50-FPN (detectron2 ``densepose_rcnn_R_50_FPN_s1x``) without detectron2.

Public API (import from the submodules; this package file stays free of torch):

- ``predictor.DensePose.load(source, device, dtype)`` -> ``DensePose``
- ``DensePose.predict(images_bgr, score_thresh)`` -> ``list[DensePoseResult]`` (batched, detectron2
  ``DefaultPredictor`` semantics)
- ``DensePose.catvton_part_maps(images: list[PIL.Image], resize=1024)`` -> ``list[PIL.Image]`` (L, 0..24)
- ``DensePose.leffa_iuv(images_rgb: list[np.ndarray])`` -> ``list[np.ndarray | None]`` (RGB = U, V, I)
- ``products.leffa_condition(iuv)`` -> the (1, 3, H, W) tensor Leffa's transform makes of it
- ``convert.convert_checkpoint(pkl, safetensors)``: the one-time ``.pkl`` conversion
"""
