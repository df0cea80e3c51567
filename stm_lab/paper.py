"""Numbers published in the paper, for side-by-side comparison (never used as results of this project).

Transcribed from "Demystify Transformers & Convolutions in Modern Image Deep Networks" (Hu, Shi, Wang, Wu et al.);
``tests/test_project.py`` re-reads them from the paper's text when it is available, so a typo cannot hide.
"""

# Table III: model -> (params in millions, FLOPs in G as printed, ImageNet-1k top-1 %)
TABLE3 = {
    'u_halonet_micro': (4.4, 0.65, 75.8), 'u_pvt_micro': (4.3, 0.57, 72.8), 'u_swin_micro': (4.4, 0.71, 74.4),
    'u_dwconv_micro': (4.4, 0.65, 75.1), 'u_internimage_micro': (4.3, 0.65, 75.3),
    'u_halonet_tiny': (31.5, 4.75, 83.0), 'u_pvt_tiny': (30.8, 4.56, 82.1), 'u_swin_tiny': (31.5, 4.91, 82.3),
    'u_dwconv_tiny': (31.9, 5.01, 82.2), 'u_internimage_tiny': (29.9, 4.83, 83.3),
    'u_halonet_small': (52.8, 8.92, 84.0), 'u_pvt_small': (50.5, 7.33, 83.2), 'u_swin_small': (52.9, 9.18, 83.3),
    'u_dwconv_small': (54.4, 9.40, 83.1), 'u_internimage_small': (50.1, 8.24, 84.1),
    'u_halonet_base': (93.3, 15.84, 84.6), 'u_pvt_base': (91.1, 12.73, 83.4), 'u_swin_base': (93.4, 16.18, 83.7),
    'u_dwconv_base': (95.8, 16.64, 83.7), 'u_internimage_base': (97.5, 16.08, 84.5),
}

# Table VII (small models): model -> (MACs in G, top-1 %)
TABLE7 = {
    'u_swin_small': (9.16, 83.3), 'u_halonet_small': (9.75, 84.0), 'u_halonet_small_switch': (9.45, 83.9),
    'u_halonet_small_1px': (9.32, 83.8), 'u_halonet_small_shift': (9.75, 82.7),
}

# Table II (tiny models): the original stage design (non-overlapped patch stem and merging) against the unified one,
# and the original block design against the unified (transformer) block: (original, unified) top-1 %
TABLE2_STAGE = {'swin': (81.1, 82.3), 'dwconv': (82.1, 82.2)}
TABLE2_BLOCK = {'halonet': (80.5, 83.0), 'dwconv': (82.2, 82.2)}

# Table VI (small models): family -> top-1 % of A, B, C, D, E (Fig. 4), and the original model's (None: not given)
TABLE6 = {
    'halonet': (84.0, 84.3, 84.4, 83.8, 83.8, None), 'pvt': (83.2, 83.4, 83.4, 78.6, 79.4, 81.7),
    'swin': (83.3, 83.5, 83.7, 82.8, 82.9, 83.0), 'dwconv': (83.1, 83.1, 83.3, 83.2, 83.6, 83.1),
    'internimage': (84.1, 84.1, 84.0, 83.8, 83.6, None),
}

# Fig. 1 compares each STM's originally reported accuracy with its unified re-implementation. The figure's values
# are not printed in the paper's text, so the "original" series here takes each STM's own paper at the ~30M (tiny)
# scale: (model name, ImageNet-1k top-1 %, bibtex key of the source). HaloNet's paper has no ~30M model trained
# with this recipe family; the paper's own number for HaloNet's original block design at tiny scale (Table II) is
# used instead and labelled so.
ORIGINAL_TINY = {
    'halonet': ('HaloNet block, re-run by the paper (Table II)', 80.5, 'hu2022demystify'),
    'pvt': ('PVT-Small', 79.8, 'wang2021pvt'),
    'swin': ('Swin-T', 81.3, 'liu2021swin'),
    'dwconv': ('ConvNeXt-T', 82.1, 'liu2022convnext'),
    'internimage': ('InternImage-T', 83.5, 'wang2023internimage'),
}

# Table V: Mask R-CNN 1x on COCO val2017, micro models: (box AP, AP_S, AP_M, AP_L, mask AP, AP_S, AP_M, AP_L)
TABLE5_MICRO = {
    'u_halonet_micro': (40.3, 24.5, 43.0, 53.7, 37.3, 18.7, 39.7, 55.2),
    'u_pvt_micro': (35.9, 21.2, 38.4, 47.2, 34.2, 16.8, 36.1, 50.2),
    'u_swin_micro': (36.6, 22.3, 39.1, 48.0, 34.6, 17.2, 36.7, 50.1),
    'u_dwconv_micro': (39.2, 23.0, 42.6, 51.0, 36.4, 17.8, 39.2, 52.7),
    'u_internimage_micro': (39.5, 22.8, 42.9, 52.7, 36.6, 17.4, 39.4, 53.6),
}
TABLE5_COLUMNS = ('box_AP', 'box_APs', 'box_APm', 'box_APl', 'mask_AP', 'mask_APs', 'mask_APm', 'mask_APl')

# Table VIII: inference images/s on an RTX 3090 at 256x256 / 512x512 / 1024x1024 (batch 128 / 32 / 12)
TABLE8_SIZES = (256, 512, 1024)
TABLE8 = {
    'u_halonet_micro': (3627, 979, 254), 'u_pvt_micro': (3755, 841, 149), 'u_swin_micro': (5307, 1415, 366),
    'u_dwconv_micro': (4299, 1103, 287), 'u_internimage_micro': (3018, 765, 197),
    'u_halonet_tiny': (1133, 330, 86), 'u_pvt_tiny': (1146, 269, 54), 'u_swin_tiny': (1587, 460, 125),
    'u_dwconv_tiny': (1582, 397, 102), 'u_internimage_tiny': (818, 208, 53),
    'u_halonet_small': (663, 200, 54), 'u_pvt_small': (827, 193, 38), 'u_swin_small': (913, 275, 76),
    'u_dwconv_small': (995, 249, 65), 'u_internimage_small': (588, 148, 38),
    'u_halonet_base': (448, 140, 38), 'u_pvt_base': (552, 127, 24), 'u_swin_base': (605, 189, 53),
    'u_dwconv_base': (740, 185, 47), 'u_internimage_base': (419, 106, 27),
}

# display names used by the paper
DISPLAY = {'halonet': 'U-HaloNet', 'pvt': 'U-PVT', 'swin': 'U-Swin Transformer', 'dwconv': 'U-DWConv',
           'internimage': 'U-InternImage', 'identity': 'U-Identity', 'pooling': 'U-Pooling'}
