"""Evaluation: model outputs to COCO detections (`predictions`) and COCO bbox mAP (`coco_eval`).

Import the submodules you need; this package imports nothing eagerly.
"""
