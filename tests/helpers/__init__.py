"""
The one place tests share fixtures from (test modules never import each
other): fakes (L{fakes}), hand-made WebSocket frames (L{frames}), real
loopback sockets (L{sockets}), base cases for the dispatcher and a shard
(L{cases}), the test broker (L{broker}) and the real node (L{node}).
"""

from tests.helpers.broker import *
from tests.helpers.cases import *
from tests.helpers.fakes import *
from tests.helpers.frames import *
from tests.helpers.node import *
from tests.helpers.opsfiles import *
from tests.helpers.sockets import *
from tests.helpers.sse import *
