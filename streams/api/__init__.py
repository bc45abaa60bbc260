"""The Python face of streamdl: read, featurize, predict, fit a head, search, publish, index a folder.

Everything here runs on the handlers, decoder limits, registry and index the workers use. ``import
streamdl`` exposes these names lazily; importing this package loads no TensorFlow either (models load
on first use). The list of public names is ``streamdl.API_NAMES``.
"""

from __future__ import annotations

from streamdl import API_NAMES
from streamdl.streams.api.featurize import ImageFeaturizer as ImageFeaturizer
from streamdl.streams.api.featurize import ImagePredictor as ImagePredictor
from streamdl.streams.api.index_folder import IndexFolderReport as IndexFolderReport
from streamdl.streams.api.index_folder import index_folder as index_folder
from streamdl.streams.api.publish import publish_events as publish_events
from streamdl.streams.api.publish import publish_images as publish_images
from streamdl.streams.api.search import contact_sheet as contact_sheet
from streamdl.streams.api.search import similar as similar
from streamdl.streams.api.tables import read_archive as read_archive
from streamdl.streams.api.tables import read_images as read_images
from streamdl.streams.api.tables import read_topic as read_topic
from streamdl.streams.api.transfer import Head as Head
from streamdl.streams.api.transfer import fit_head as fit_head

__all__ = list(API_NAMES)
