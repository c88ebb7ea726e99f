"""The broker's parts: topics, publish, reads, replica writes, consumer groups,
retention and the memory budget, and the JSON views of a topic (see
:mod:`sprawl.pubsub.broker`)."""

from sprawl.pubsub.broker import Broker
from sprawl.pubsub.names import check_group_name, check_topic_name
from sprawl.pubsub.publish import ACKS, PublishResult

__all__ = ["ACKS", "Broker", "PublishResult", "check_group_name", "check_topic_name"]
