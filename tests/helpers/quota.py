"""
Client quotas on the Apache Kafka test cluster: a consumer_byte_rate for one
client id slows what that client fetches (the broker throttles it) and
nothing else. Set through the Java admin client (the Python binding has no
quota API), from the jars the test broker runs on.
"""

from __future__ import annotations

import glob
import os
import subprocess

from odinws_tools.kafka.jars import ensure_jars

_SOURCE = os.path.join(os.path.dirname(__file__), "java", "ClientQuota.java")


def set_consumer_byte_rate(bootstrap: str, client_id: str, rate: float | None) -> None:
    """Throttle C{client_id}'s fetches to C{rate} bytes/s (None: no quota)."""
    jars = ensure_jars()
    classpath = ":".join(glob.glob(os.path.join(jars, "kafka-clients-*.jar"))
                         + glob.glob(os.path.join(jars, "slf4j-api-*.jar")))
    subprocess.run(["java", "-cp", classpath, _SOURCE, bootstrap, client_id,
                    "-" if rate is None else str(rate)],
                   check=True, timeout=120, capture_output=True, stdin=subprocess.DEVNULL)
