"""Model quality in production: live accuracy from late labels, drift without labels, automatic rollback.

:class:`~streamdl.streams.quality.sink.QualitySink` is the entry point (a pipeline sink the worker adds
when the ``quality`` setting is on); docs/model-quality.md explains each signal, threshold and cost.
"""
