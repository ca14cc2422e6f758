"""Readers of the real datasets of the transfer experiments, in their on-disk
formats: PASCAL VOC 2012, MS-COCO, Cityscapes, chest X-ray lungs (Montgomery /
Shenzhen) and CelebAMask-HQ parts.

Importing the package registers each segmentation reader in
:data:`~labelfactory.downstream.real.REAL_DATASETS` (``voc``, ``coco``,
``cityscapes``, ``chest_xray``, ``celebamask_hq``), the keypoint reader ``coco_keypoints`` in
:data:`~labelfactory.downstream.real_keypoints.REAL_KEYPOINT_DATASETS`, each detection source in
:data:`DETECTION_DATASETS`, and the converters of the transfer targets
(``voc``, ``cityscapes``, ``chest_xray``) in :data:`TARGET_SPLITS`; experiment imports it, so the readers are there
whichever module comes first. pycocotools and detectron2 are imported only
when a reader needs them.
"""

from labelfactory.downstream.datasets import (  # noqa: F401  (registration)
    celebamask, chest_xray, cityscapes, coco, coco_keypoints, voc)
from labelfactory.downstream.datasets.base import DETECTION_DATASETS, TARGET_SPLITS, LabelledSplit, register_detection

__all__ = ["DETECTION_DATASETS", "TARGET_SPLITS", "LabelledSplit", "register_detection"]
