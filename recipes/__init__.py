"""Shipped recipes (YAML), installed as ``qsam2_ext.recipes.shipped``; see ``qsam2_ext.recipes``."""
