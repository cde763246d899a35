"""odinws: a Kafka-to-WebSocket fan-out daemon on Twisted and Autobahn."""

__version__ = "0.1.0"
