"""Configuration of DensePose R-50-FPN (``densepose_rcnn_R_50_FPN_s1x``), as plain data.

Only the knobs that differ between the real model and the reduced ("thin") golden config are
fields, plus the ResNet depth; everything else (anchors, NMS and top-k settings, ROIAlign sizes, 8 head convs,
deconv kernel 4, ×2 upsampling) is a constant of the architecture and lives here as module-level
values so both sizes run the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Input (detectron2 INPUT.*, MODEL.PIXEL_*): BGR order, mean subtracted, std 1.
PIXEL_MEAN_BGR = (103.53, 116.28, 123.675)
MAX_SIZE_TEST = 1333
SIZE_DIVISIBILITY = 32

# MSRA ResNet (STRIDE_IN_1X1, FrozenBN eps 1e-5): bottleneck blocks per stage res2..res5 by depth.
RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
FROZEN_BN_EPS = 1e-5

# FPN levels and strides.
FPN_LEVELS = ("p2", "p3", "p4", "p5", "p6")
FPN_STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
ROI_LEVELS = ("p2", "p3", "p4", "p5")

# RPN.
ANCHOR_SIZES = (32, 64, 128, 256, 512)  # one size per FPN level
ANCHOR_ASPECT_RATIOS = (0.5, 1.0, 2.0)
RPN_PRE_NMS_TOPK = 1000
RPN_POST_NMS_TOPK = 1000
RPN_NMS_THRESH = 0.7
RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
BOX_SCALE_CLAMP = math.log(1000.0 / 16)

# Box head.
BOX_POOLER_RESOLUTION = 7
POOLER_SAMPLING_RATIO = 2
CANONICAL_BOX_SIZE = 224
CANONICAL_LEVEL = 4
ROI_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
ROI_NMS_THRESH = 0.5
DETECTIONS_PER_IMAGE = 100

# DensePose branch.
DP_POOLER_RESOLUTION = 28
DP_NUM_STACKED_CONVS = 8
DP_DECONV_KERNEL = 4
DP_UP_SCALE = 2
DP_COARSE_CHANNELS = 2  # foreground / background
DP_PATCHES = 24  # fine body parts; +1 for background
DECODER_COMMON_STRIDE = 4

# Consumers' score thresholds (ROI_HEADS.SCORE_THRESH_TEST as each wrapper sets it).
LEFFA_SCORE_THRESH = 0.5
CATVTON_SCORE_THRESH = 0.8


@dataclass(frozen=True)
class DensePoseConfig:
    """Depth, the seven widths and the test short side; the names follow detectron2's config keys."""

    depth: int = 50  # MODEL.RESNETS.DEPTH (the checkpoint and both golden configs use 50)
    stem_out_channels: int = 64  # MODEL.RESNETS.STEM_OUT_CHANNELS
    res2_bottleneck_channels: int = 64  # MODEL.RESNETS.WIDTH_PER_GROUP (×2 per stage)
    res2_out_channels: int = 256  # MODEL.RESNETS.RES2_OUT_CHANNELS (×2 per stage)
    fpn_channels: int = 256  # MODEL.FPN.OUT_CHANNELS
    box_fc_dim: int = 1024  # MODEL.ROI_BOX_HEAD.FC_DIM
    decoder_conv_dims: int = 256  # MODEL.ROI_DENSEPOSE_HEAD.DECODER_CONV_DIMS
    decoder_out_channels: int = 256  # MODEL.ROI_DENSEPOSE_HEAD.DECODER_NUM_CLASSES
    head_conv_dim: int = 512  # MODEL.ROI_DENSEPOSE_HEAD.CONV_HEAD_DIM
    min_size_test: int = 800  # INPUT.MIN_SIZE_TEST


REAL_CONFIG = DensePoseConfig()

# The reduced config of the golden fixtures (shared/reference/densepose/thin): same depth and
# settings, every width divided by 4-8, short side 320. Used for the ``tiny`` weight source.
TINY_CONFIG = DensePoseConfig(
    stem_out_channels=16,
    res2_bottleneck_channels=8,
    res2_out_channels=32,
    fpn_channels=64,
    box_fc_dim=128,
    decoder_conv_dims=64,
    decoder_out_channels=64,
    head_conv_dim=64,
    min_size_test=320,
)
