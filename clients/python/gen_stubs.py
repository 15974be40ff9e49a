#!/usr/bin/python3
"""Generates quotad.v1's Python modules from proto/quotad/v1/*.proto.

    gen_stubs.py --proto_dir=PROTO_ROOT --out=PACKAGE_ROOT [--protoc=protoc]
                 [--plugin=grpc_python_plugin]

Writes PACKAGE_ROOT/quotad/v1/{quotad,config}_pb2.py, quotad_pb2_grpc.py and an __init__.py, with
Debian's `protoc` and `grpc_python_plugin` (python3-grpc-tools' grpc_tools.protoc is used only
when the plugin is missing). The modules import each other as `quotad.v1.*`, which is why they
live inside the `quotad` package. Used by setup.py (pip install) and by CMake (the build tree).
Nothing it writes is committed.
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys


def find_proto_dir(start: str) -> str:
    """The directory holding quotad/v1/*.proto: $QUOTAD_PROTO_DIR, else the repository's proto/."""
    candidates = [os.environ.get("QUOTAD_PROTO_DIR", ""),
                  os.path.join(start, "proto"),
                  os.path.join(start, "..", "..", "proto")]
    for c in candidates:
        if c and glob.glob(os.path.join(c, "quotad", "v1", "*.proto")):
            return os.path.abspath(c)
    raise SystemExit("gen_stubs: no quotad/v1/*.proto found; set QUOTAD_PROTO_DIR to the "
                     "repository's proto/ directory (tried: %s)" % ", ".join(c for c in candidates if c))


def generate(proto_dir: str, out: str, protoc: str = "", plugin: str = "") -> list:
    protos = sorted(os.path.relpath(p, proto_dir)
                    for p in glob.glob(os.path.join(proto_dir, "quotad", "v1", "*.proto")))
    if not protos:
        raise SystemExit(f"gen_stubs: no quotad/v1/*.proto under {proto_dir}")
    pkg = os.path.join(out, "quotad", "v1")
    os.makedirs(pkg, exist_ok=True)
    protoc = protoc or shutil.which("protoc") or ""
    plugin = plugin or shutil.which("grpc_python_plugin") or ""
    args = [f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}"]
    if protoc and plugin:
        cmd = [protoc, *args, f"--plugin=protoc-gen-grpc_python={plugin}", *protos]
    else:
        try:
            import grpc_tools  # noqa: F401  (python3-grpc-tools)
        except ImportError:
            raise SystemExit("gen_stubs: needs protoc and grpc_python_plugin (Debian: "
                             "protobuf-compiler protobuf-compiler-grpc) or python3-grpc-tools")
        cmd = [sys.executable, "-m", "grpc_tools.protoc", *args, *protos]
    subprocess.run(cmd, check=True)
    # Only the service file gets a *_pb2_grpc.py with content; drop the empty ones.
    for p in glob.glob(os.path.join(pkg, "*_pb2_grpc.py")):
        with open(p) as f:
            if "class " not in f.read():
                os.remove(p)
    init = os.path.join(pkg, "__init__.py")
    with open(init, "w") as f:
        f.write('"""Generated from proto/quotad/v1 at build time; do not edit."""\n')
    return sorted(glob.glob(os.path.join(pkg, "*.py")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proto_dir", default="")
    ap.add_argument("--out", required=True)
    ap.add_argument("--protoc", default="")
    ap.add_argument("--plugin", default="")
    a = ap.parse_args()
    proto_dir = a.proto_dir or find_proto_dir(os.path.dirname(os.path.abspath(__file__)))
    for f in generate(proto_dir, a.out, a.protoc, a.plugin):
        print(f)


if __name__ == "__main__":
    main()
