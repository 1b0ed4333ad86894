"""The checked-in stubs are what scripts/generate.py makes from proto/."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parents[1]


def test_stubs_match_the_protos(tmp_path):
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools is not installed (pip install ./python[test]): cannot regenerate the stubs to compare")
    from importlib.metadata import version

    if version("grpcio-tools") != "1.75.1":
        pytest.skip(f"grpcio-tools {version('grpcio-tools')} is installed; the stubs are made with 1.75.1 (pip install ./python[test])")
    out = tmp_path / "_proto"
    subprocess.run([sys.executable, str(HERE / "scripts" / "generate.py"), str(out)], check=True, capture_output=True)
    checked_in = HERE / "src" / "fleet_health" / "_proto"
    made = {p.relative_to(out): p.read_text() for p in out.rglob("*.py")}
    have = {p.relative_to(checked_in): p.read_text() for p in checked_in.rglob("*.py")}
    assert sorted(made) == sorted(have)
    stale = [str(p) for p in made if made[p] != have[p]]
    assert not stale, f"out of date (run python scripts/generate.py): {stale}"
