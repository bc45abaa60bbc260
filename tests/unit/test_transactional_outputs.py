"""``exactly_once`` sends each output in the transaction Faust commits its input's offset with; this fails when a
Faust upgrade names those transactions differently (the outputs would then commit apart from the offsets)."""

from __future__ import annotations

import asyncio

from faust.types import TP

from streamdl.records import InMessage
from streamdl.settings import load_settings
from streamdl.streams.agents.app import create_app
from streamdl.streams.agents.transactional import FaustTransactionalOutputs


def test_outputs_go_to_the_transaction_that_commits_their_input_offset(tmp_path):
    settings = load_settings(
        {"state_dir": tmp_path, "consumer_group": "eos-test", "processing_guarantee": "exactly_once"}, env_file=None
    )
    app = create_app(settings)
    assert app.conf.processing_guarantee.value == "exactly_once"
    images = settings.topic("images")
    app.assignor._topic_groups = {images: 0}  # what the group leader's assignment sets
    committed: dict[str, dict] = {}

    class Producer:  # stands in for the aiokafka producers: records which transaction gets which offsets
        async def commit_transactions(self, by_transactional_id, group_id, start_new_transaction=True):
            committed.update(by_transactional_id)

    async def commit() -> None:
        transactions = app.consumer.transactions
        transactions.producer = Producer()
        await transactions.commit({TP(images, 0): 11, TP(images, 3): 42})

    asyncio.run(commit())
    sink = FaustTransactionalOutputs(app, settings)

    def source(partition: int) -> InMessage:
        return InMessage(key=b"k", value=b"v", topic=images, partition=partition, offset=1)

    assert committed[sink.transactional_id(source(0))] == {TP(images, 0): 11}
    assert committed[sink.transactional_id(source(3))] == {TP(images, 3): 42}
    assert sink.transactional_id(None) is None  # no input message (a sink_blocked alert): outside any transaction


def test_the_guarantee_is_at_least_once_unless_set(tmp_path):
    settings = load_settings({"state_dir": tmp_path}, env_file=None)
    assert settings.processing_guarantee == "at_least_once"
    assert create_app(settings).conf.processing_guarantee.value == "at_least_once"
