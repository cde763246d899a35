"""The C{odinws-shard} twistd plugin's entry points (see L{odin_ws.tap})."""

from odin_ws.tap import ShardOptions as Options
from odin_ws.tap import makeShardService as makeService

__all__ = ["Options", "makeService"]
