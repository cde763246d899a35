"""
odinws tests (trial). Unit tests use Twisted's fakes; integration tests start
the real broker and processes.
"""
