# cffi_modules cannot be declared in pyproject.toml (cffi issue #55); everything else lives
# there, except the package list: the CLI's folder is `cli/` but it installs as
# `maglev_cli`, a mapping pyproject's package finder cannot express.
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["maglev", "maglev.*"]) + ["maglev_cli"],
    package_dir={"maglev_cli": "cli"},
    cffi_modules=["maglev/_cffi_src/build.py:ffibuilder"],
)
