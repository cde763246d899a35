"""
Tests for L{odinws_tools.kafka}: C{python -m odinws_tools.kafka} starts
Apache Kafka, says where once it takes records, and leaves no process or
temporary data behind when stopped; a missing Maven is a clear error.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from twisted.trial import unittest

from odinws_tools import mavenfetch
from odinws_tools.embedded_broker import free_port
from odinws_tools.kafka import jars
from tests.helpers.node import ROOT, descendants, pid_alive, wait_for


class KafkaToolTests(unittest.TestCase):
    """The command line tool, run as a user runs it."""

    def test_startsServesAndStops(self):
        """
        The tool prints C{bootstrap=127.0.0.1:PORT} (the port asked for);
        a record produced there comes back to a consumer; SIGTERM stops it
        with status 0, ends every JVM it started and removes its temporary
        data folder.
        """
        port = free_port()
        err_path = os.path.abspath(self.mktemp())
        with open(err_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "odinws_tools.kafka", "--port", str(port)],
                                    cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=err)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        line = proc.stdout.readline().decode()
        self.assertEqual(line, f"bootstrap=127.0.0.1:{port}\n")
        jvms = descendants(proc.pid)
        self.assertTrue(jvms)

        topic = f"tool-{uuid.uuid4().hex[:8]}"
        producer = Producer({"bootstrap.servers": line.split("=")[1].strip()})
        producer.produce(topic, b"hello")
        self.assertEqual(producer.flush(30), 0)
        consumer = Consumer({"bootstrap.servers": f"127.0.0.1:{port}", "group.id": topic})
        self.addCleanup(consumer.close)
        consumer.assign([TopicPartition(topic, 0, 0)])
        msg = wait_for(lambda: consumer.poll(0.5), 30, 0, "the record fetched")
        self.assertEqual((msg.error(), msg.value()), (None, b"hello"))

        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(60), 0)
        self.assertEqual({pid for pid in jvms if pid_alive(pid)}, set())
        with open(err_path, encoding="utf-8") as f:
            data_dir = re.search(r"data in (\S+)", f.read()).group(1)
        self.assertFalse(os.path.exists(data_dir))


class JarsTests(unittest.TestCase):
    def test_mavenMissing(self):
        """Without Maven and without the jars, the error says what to install."""
        self.patch(jars, "JARS_ROOT", os.path.abspath(self.mktemp()))
        self.patch(mavenfetch.shutil, "which", lambda name: None)
        with self.assertRaises(RuntimeError) as caught:
            jars.ensure_jars()
        self.assertIn("apt-get install maven", str(caught.exception))

    def test_versionFromPom(self):
        """The version the tool runs is the one pom.xml pins: a Kafka 4 release."""
        self.assertRegex(jars.kafka_version(), r"^4\.\d+\.\d+$")
