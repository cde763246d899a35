"""
odinws tests (trial). Unit tests use Twisted's fakes; integration tests start
the real broker and processes.
"""

from hypothesis import HealthCheck, settings

# Property tests check what they generate, not how fast: on a loaded machine
# (CI, or several suites at once) generating examples can be slow, and
# hypothesis's timing checks would fail a test whose property holds.
settings.register_profile(
    "odinws", deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("odinws")
