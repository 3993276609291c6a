"""less_ray: LESS (Xia et al., ICML 2024) targeted instruction-data selection on Ray."""
__version__ = "0.1.0"
