"""pip install clients/python: the quotad package with its gRPC stubs generated at build time.

The stubs (quotad/v1/*_pb2*.py) come from the repository's proto/quotad/v1/*.proto through
Debian's `protoc` and `grpc_python_plugin` (packages protobuf-compiler, protobuf-compiler-grpc)
while the package is built; nothing generated is committed. Run-time dependencies are Debian's
python3-grpcio and python3-protobuf. There is deliberately no pyproject.toml [build-system]
table: pip would then fetch setuptools from PyPI into an isolated build environment, and the
machines this installs on have no PyPI access. Set QUOTAD_PROTO_DIR when building from a copy
of this directory outside the repository.
"""

import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_stubs  # noqa: E402


class BuildWithStubs(build_py):
    """build_py, then protoc + grpc_python_plugin into the build directory's quotad/v1/."""

    def run(self) -> None:
        super().run()
        if not self.dry_run:
            files = gen_stubs.generate(gen_stubs.find_proto_dir(HERE), self.build_lib)
            self.announce("generated " + ", ".join(os.path.basename(f) for f in files), level=2)


setup(
    name="quotad",
    version="0.1.0",
    description="Python client of quotad, the rate-limit coordinator for shared upstream API keys",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    packages=["quotad"],
    package_data={"quotad": ["py.typed"]},
    python_requires=">=3.9",
    install_requires=["grpcio>=1.51", "protobuf>=3.21"],
    cmdclass={"build_py": BuildWithStubs},
    zip_safe=False,
)
