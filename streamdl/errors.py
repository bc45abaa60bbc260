"""The exception hierarchy of streamdl. Every error a user can cause says what was wrong and what to do."""


class StreamdlError(Exception):
    """Base class of every error streamdl raises on purpose."""


class SettingsError(StreamdlError):
    """A setting has a value that cannot be used."""


class StackError(StreamdlError):
    """The local Kafka/Elasticsearch stack could not be fetched, started, checked or stopped."""


class ServiceUnavailable(StreamdlError):
    """Kafka or Elasticsearch did not answer."""
