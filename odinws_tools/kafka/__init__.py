"""
Apache Kafka for tests and benchmarks (C{python -m odinws_tools.kafka}):
KRaft nodes on loopback from jars Maven fetches at the version C{pom.xml}
pins. L{cluster.KafkaCluster} is the API; L{jars} fetches the jars.
"""
