"""PFA-ScanNet: pyramidal feature aggregation with dense, exact whole-slide scanning.

Zhao et al., "PFA-ScanNet: Pyramidal Feature Aggregation with Synergistic
Learning for Breast Cancer Metastasis Analysis", MICCAI 2019.
"""

__version__ = "0.1.0"
