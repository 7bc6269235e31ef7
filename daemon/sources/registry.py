"""The registry of queue source types: each is registered here, and only here, with its
config model in ``SourceConfig`` (discriminated on ``type``) and its runtime class in
``build_source``."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from daemon.intake import Intake
from daemon.sources.amqp import AmqpSource, AmqpSourceConfig
from daemon.sources.base import QueueSource, QueueSourceConfig
from daemon.sources.nats import NatsSource, NatsSourceConfig
from daemon.sources.redis import RedisSource, RedisSourceConfig
from daemon.sources.sqs import SqsSource, SqsSourceConfig

SourceConfig = Annotated[
    SqsSourceConfig | NatsSourceConfig | AmqpSourceConfig | RedisSourceConfig,
    Field(discriminator="type"),
]


def build_source(config: QueueSourceConfig, intake: Intake, writer_id: str) -> QueueSource:
    """Instantiate the runtime source for one ``ingest.sources[]`` entry."""
    if isinstance(config, SqsSourceConfig):
        return SqsSource(config, intake, writer_id)
    if isinstance(config, NatsSourceConfig):
        return NatsSource(config, intake, writer_id)
    if isinstance(config, AmqpSourceConfig):
        return AmqpSource(config, intake, writer_id)
    if isinstance(config, RedisSourceConfig):
        return RedisSource(config, intake, writer_id)
    raise TypeError(f"no source type for {type(config).__name__}")


__all__ = ["SourceConfig", "build_source"]
