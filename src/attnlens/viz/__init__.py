"""Figures: heat-map overlays, method comparisons, probing plots."""
