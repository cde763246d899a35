"""
odinws_client: an asyncio client for odinws, the Kafka-to-WebSocket fan-out
daemon. It implements the client side of docs/protocol.md: reconnect with
full-jitter backoff and the close-code rules, resubscription with recovery
of missed events from the positions it saw, snapshots, token refresh.

    async with Client("wss://odin.example/ws", token_provider=get_jwt) as client:
        async for item in client.subscribe("odin.token.*.price", snapshot=True):
            if isinstance(item, Gap):
                refetch_state(item.reason)
            else:
                show(item.channel, item.data)
"""

from odinws_client.client import Client, ConnectionState, StateChange
from odinws_client.messages import Event, Gap, ServerError, Stopped, SubscriptionFailed
from odinws_client.subscription import State, Subscription
from odinws_client.tokens import TokenError, TokenProvider

__all__ = [
    "Client", "ConnectionState", "Event", "Gap", "ServerError", "State", "StateChange",
    "Stopped", "Subscription", "SubscriptionFailed", "TokenError", "TokenProvider",
]
__version__ = "0.1.0"
