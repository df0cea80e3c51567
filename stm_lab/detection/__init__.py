"""Object detection with the unified backbones (Sec. 4.3.3, 5.2, 6.1, 6.2.3): Mask R-CNN from torchvision's parts
(:mod:`.model`), a generated detection set in COCO format (:mod:`.shapes`), pycocotools evaluation (:mod:`.coco_eval`),
training with the paper's 1x schedule (:mod:`.train`) and the scale-invariance sweep (:mod:`.scale`)."""
