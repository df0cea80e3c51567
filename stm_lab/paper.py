"""Numbers published in the paper, for side-by-side comparison (never used as results of this project).

Transcribed from "Demystify Transformers & Convolutions in Modern Image Deep Networks" (Hu, Shi, Wang, Wu et al.);
``tests/test_paper.py`` re-reads them from the paper's text when it is available, so a typo cannot hide.
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

# display names used by the paper
DISPLAY = {'halonet': 'U-HaloNet', 'pvt': 'U-PVT', 'swin': 'U-Swin Transformer', 'dwconv': 'U-DWConv',
           'internimage': 'U-InternImage', 'identity': 'U-Identity', 'pooling': 'U-Pooling'}
