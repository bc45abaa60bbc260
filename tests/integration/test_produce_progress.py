"""The producer's progress bar names its unit in full (``images/s``, not ``ima/s``)."""

from __future__ import annotations

import pytest

from streamdl.connectors.image_producer import iter_digits, publish

pytestmark = pytest.mark.integration


def test_the_progress_bar_says_images_per_second(stack, topic_factory, capsys):
    topic = topic_factory("progress")
    report = publish(stack, iter_digits(20), total=20, progress=True, rate=40, topic=topic)
    assert report.sent == 20
    err = capsys.readouterr().err
    assert "images/s" in err and "ima/s" not in err.replace("images/s", "")
