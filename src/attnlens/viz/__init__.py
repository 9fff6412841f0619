"""Visualisation helpers (figures, overlays) and atomic output writing (:mod:`attnlens.viz.io`)."""
