"""Generates fleet_health/_proto from the repository's proto/ folder.

    python scripts/generate.py            # from python/, with grpcio-tools==1.75.1

The stubs are checked in (so that installing the package needs neither
grpcio-tools nor protoc); tests/test_stubs.py fails when they no longer match
what this script makes from proto/. grpcio-tools is pinned: the generated code
names the oldest grpcio and protobuf runtimes it works with, and the package
depends on exactly those (pyproject.toml).
"""

import pathlib
import re
import sys

HERE = pathlib.Path(__file__).resolve().parent.parent
PROTO = HERE.parent / "proto"
FILES = ["fleethealth/v1/agent.proto", "fleethealth/v1/fleet.proto"]
PINNED = "1.75.1"


def generate(out: pathlib.Path) -> None:
    """Writes the stubs under `out` (a folder that becomes fleet_health/_proto)."""
    import grpc_tools
    from grpc_tools import protoc

    version = getattr(grpc_tools, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("grpcio-tools")
    if version != PINNED:
        raise SystemExit(f"grpcio-tools {version} found; the stubs are made with {PINNED}")
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *[str(PROTO / f) for f in FILES],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for path in sorted(out.rglob("*.py")):
        text = path.read_text()
        # Package-relative imports: the stubs live inside fleet_health.
        text = re.sub(r"^from fleethealth\.v1 import", "from fleet_health._proto.fleethealth.v1 import", text, flags=re.M)
        path.write_text(text)
    for folder in [out, out / "fleethealth", out / "fleethealth" / "v1"]:
        init = folder / "__init__.py"
        init.write_text('"""Generated from proto/ by scripts/generate.py: do not edit."""\n')


if __name__ == "__main__":
    target = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "src" / "fleet_health" / "_proto"
    generate(target)
    print(f"wrote {target}")
