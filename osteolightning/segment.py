"""``osteo-segment``: fit a bone-segmentation network, then test its best checkpoint.

The same run as ``osteo-train`` (run directory, resume, checkpoints, loggers, report) with the
segmentation config (``osteolightning/conf/segment.yaml``): a segmentation network, bone masks
as targets, Dice / IoU / HD95 with bootstrap intervals.

Example:
    osteo-segment                                   # attention U-Net with deep supervision, phantom
    osteo-segment model=swin_unetr data=seg_folder data.root=/data/femur \\
        data.mask_classes=[background,femur]
    osteo-segment -m model=unet,attention_unet_ds,unetr,encoder_unet seed=0,1,2
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from osteolightning import train as _train
from osteolightning.runs.failures import user_errors
from osteolightning.utils.config import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="segment")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the optimised metric (validation Dice) for sweepers."""
    with user_errors("osteo-segment", cfg.paths.output_dir):
        return _train.run_job(cfg)


if __name__ == "__main__":
    main()
