"""Unit tests of the Python client library (clients/python: odinws_client)."""
