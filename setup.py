# cffi_modules cannot be declared in pyproject.toml (cffi issue #55); everything else lives there.
from setuptools import setup

setup(cffi_modules=["maglev/_cffi_src/build.py:ffibuilder"])
