"""
The one place tests share fixtures from (test modules never import each
other): fakes (L{fakes}), hand-made WebSocket frames (L{frames}), real
loopback sockets (L{sockets}), base cases for the dispatcher and a shard
(L{cases}), the test broker (L{broker}) and the real node (L{node}).
"""

from tests.helpers.broker import *  # noqa: F401,F403
from tests.helpers.cases import *  # noqa: F401,F403
from tests.helpers.fakes import *  # noqa: F401,F403
from tests.helpers.frames import *  # noqa: F401,F403
from tests.helpers.node import *  # noqa: F401,F403
from tests.helpers.opsfiles import *  # noqa: F401,F403
from tests.helpers.sockets import *  # noqa: F401,F403
from tests.helpers.sse import *  # noqa: F401,F403
