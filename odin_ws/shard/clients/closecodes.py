"""
The close codes of docs/protocol.md and how a closed connection is
counted, for every transport (WebSocket close frames; an event stream's
end uses the same counts).
"""

from __future__ import annotations

from odin_ws.common import metrics

#: Close codes of docs/protocol.md.
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_RESTARTING = 4000
CLOSE_TOKEN_EXPIRED = 4001
CLOSE_SLOW_CONSUMER = 4008


#: The codes only the server decides (docs/protocol.md); a client may send them too.
SERVER_CLOSE_CODES = frozenset((CLOSE_RESTARTING, CLOSE_TOKEN_EXPIRED, CLOSE_SLOW_CONSUMER))


def count_closed(code: int | None, clean: bool, by_server: bool = True) -> None:
    """
    Count a closed connection by why (C{odinws_connections_closed_total})
    and its code. A server code the client sent (C{by_server} false) is
    its choice, not the server's decision: counted as C{other_4xxx}, never
    as a slow consumer (issue 23, L4).
    """
    if not by_server and code in SERVER_CLOSE_CODES:
        label = "other_4xxx"
    else:
        label = metrics.close_code_label(code)
    reason = "slow_consumer" if label == str(CLOSE_SLOW_CONSUMER) else (
        "clean" if clean else "dropped")
    metrics.CONNECTIONS_CLOSED.labels(reason=reason, code=label).inc()
