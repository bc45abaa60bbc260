"""Retraining the served classifier from the archive: the Beam pipeline and the heads."""
