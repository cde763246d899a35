"""
The one thing pyproject.toml cannot say without a warning (setuptools calls
its ext-modules table experimental): the fan-out's send loop in C
(odin_ws/shard/delivery/nativesend.py; why C with the CPython API:
docs/architecture.md). Optional: without a compiler or Python's headers
the install still succeeds, and outbound.native: auto runs the pure-Python
loop. Everything else is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "odin_ws.shard.delivery._sendrun", ["odin_ws/shard/delivery/_sendrun.c"], optional=True,
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"])])
