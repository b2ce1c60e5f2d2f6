"""RQ queues with the JSON serializer: job arguments are data, never pickled objects."""

from __future__ import annotations

import redis
from rq import Queue
from rq.serializers import JSONSerializer

DEFAULT = "default"
QUEUE_NAMES = (DEFAULT,)


def get_queue(connection: redis.Redis, name: str = DEFAULT) -> Queue:
    return Queue(name, connection=connection, serializer=JSONSerializer)
