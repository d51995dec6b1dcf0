"""Visual quality inspection: YOLO defect detection on Ultralytics (the `vision` extra).

- `convert`: Pascal VOC XML / COCO JSON -> the YOLO layout (images/labels x splits, dataset.yaml)
- `checks`: a YOLO dataset's problems, every bad record rejected with its reason
- `metrics`: IoU (corner boxes) and our own mAP, checked against Ultralytics' on a hand-made case
- `detect`: train / val / predict through Ultralytics in a tunesmith run folder
- `inspector`: the quality inspector (severity, PASS / WARNING / FAIL, annotated images, reports)
- `vlm`: optional written analysis by an image-text-to-text model
- `demo`: a synthetic surface-defect dataset and the offline end-to-end demo

convert, checks, metrics and the verdict rules need only numpy, Pillow and PyYAML; the rest
imports Ultralytics lazily (`require_ultralytics`), so a missing extra is one sentence.
"""
