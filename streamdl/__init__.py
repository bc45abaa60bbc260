"""streamdl core: the settings object, the exception hierarchy and the metrics registry shared by
``streams``, ``models``, ``connectors`` and ``infra``."""

__version__ = "0.1.0"
