import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

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
    assert "[torch_dynamo_backends]" in entry and "tritonfuse = tritonfuse.dynamo_entry:tritonfuse_backend" in entry


def test_checkout_folders_do_not_shadow_installed_packages():
    # kernels/ and patterns/ are tritonfuse.kernels / tritonfuse.patterns: where a package of that top-level
    # name is installed (HF's `kernels`, which transformers >= 5.25 requires), a test process, and a
    # ``python -c`` it starts from the checkout, must import that one, not our folder
    import importlib.metadata
    import importlib.util

    installed = []
    for name in ("kernels", "patterns"):
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        installed.append(name)
        spec = importlib.util.find_spec(name)
        places = list(spec.submodule_search_locations or []) + [spec.origin or ""]
        assert not any(str(p).startswith(str(ROOT / name)) for p in places), (name, places)
    if not installed:
        pytest.skip("no package named kernels or patterns is installed here")
    code = f"import importlib.util as u; print(u.find_spec({installed[0]!r}).origin)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and str(ROOT / installed[0]) not in out.stdout, (out.stdout, out.stderr)


def test_python_m_tritonfuse_from_the_checkout_builds_hf_models(tmp_path):
    # `python -m tritonfuse` run from the checkout puts it first on sys.path; tritonfuse/__main__.py moves it
    # behind the installed packages, so transformers (>= 5.25 imports HF's `kernels`) builds its models
    import importlib.metadata
    import os

    pytest.importorskip("transformers")
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("HF's kernels package is not installed here: nothing to shadow")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    env.setdefault("TRITON_INTERPRET", "1")
    out = subprocess.run([sys.executable, "-m", "tritonfuse", "bench", "--models", "bert-base", "--modes", "eager",
                          "--small", "--no-progress", "--out", str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "bert-base" in out.stdout, out.stderr[-2000:]


def test_checkout_moves_behind_site_packages(monkeypatch):
    import os

    from tritonfuse import _paths

    monkeypatch.setattr(sys, "path", ["", *[p for p in sys.path if p not in ("", str(ROOT))]])
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("PYTHONSAFEPATH", raising=False)
    _paths.checkout_behind_site_packages()
    assert sys.path[-1] == str(ROOT) and "" not in sys.path and os.environ["PYTHONSAFEPATH"] == "1"


def test_conftest_sets_the_gpu_suite_s_settings_before_tritonfuse_reads_them():
    # On a GPU the suite runs with TRITONFUSE_MEASURE=0 and TRITONFUSE_AUTOTUNE=0 (exact match counts need every
    # servable site replaced). tritonfuse reads its config once, when anything of it is first imported: from
    # 50d1bf6 to 1b533cf conftest imported tritonfuse._paths first, so the GPU suite timed its sites (6 failed).
    # conftest runs here as on a GPU machine (torch.cuda.is_available() True), in a process of its own.
    conftest = pathlib.Path(__file__).with_name("conftest.py")
    code = ("import runpy, torch\n"
            "torch.cuda.is_available = lambda: True\n"
            f"runpy.run_path({str(conftest)!r})\n"
            "from tritonfuse import config\n"
            "print(config.measure_enabled(), config.autotune_enabled())\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRITONFUSE_")}
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr[-3000:]
    assert got.stdout.split() == ["False", "False"], got.stdout
