import pathlib
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_wheel_installs_one_top_level_name(tmp_path):
    # patterns/ and kernels/ ship as tritonfuse.patterns / tritonfuse.kernels; nothing else at the top level
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("tritonfuse-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
        assert tops == {"tritonfuse"}
        for mod in ("tritonfuse/patterns/linear_act.py", "tritonfuse/kernels/linear_act.py", "tritonfuse/backend.py"):
            assert mod in names
        meta = next(n for n in names if n.endswith("entry_points.txt"))
        entry = z.read(meta).decode()
    assert "[torch_dynamo_backends]" in entry and "tritonfuse = tritonfuse.backend:tritonfuse_backend" in entry
