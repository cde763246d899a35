# The twistd plugins of odinws. Kept import-light: nothing heavy (and never
# the reactor) is imported until twistd picks one of these.
from twisted.application.service import ServiceMaker

odinws = ServiceMaker(
    "odinws",
    "odin_ws.tap",
    "Kafka-to-WebSocket fan-out: dispatcher, shard supervisor and hub.",
    "odinws",
)

odinws_shard = ServiceMaker(
    "odinws shard",
    "odin_ws.shard_tap",
    "One odinws shard process (started by the odinws parent, not by hand).",
    "odinws-shard",
)
