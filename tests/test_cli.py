"""The CLI on the tiny model: exit codes, the results JSON contract, --small on the CPU, a missing optional
dependency, an unknown model or mode, a failing mode, and profile/explain naming layers and replaced sites."""

from __future__ import annotations

import json
import math
import re
import statistics
import sys

import pytest
import torch

from tritonfuse import cli, results, zoo

FAST = ["--small", "--no-progress"]


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- bad input: exit status 2 with the valid names ------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["bench", "--models", "tiny-mlp,nope"],
    ["profile", "nope"],
    ["explain", "nope"],
])
def test_unknown_model_exits_2_listing_valid(capsys, argv):
    code, out, err = run(capsys, *argv, *FAST)
    assert code == 2
    assert "unknown model 'nope'" in err
    for name in zoo.MODELS:
        assert name in err


def test_unknown_mode_exits_2_listing_valid(capsys):
    code, _, err = run(capsys, "bench", "--models", "tiny-mlp", "--modes", "eager,turbo", *FAST)
    assert code == 2
    assert "unknown mode 'turbo'" in err
    for mode in cli.MODES:
        assert mode in err


@pytest.mark.parametrize("argv", [[], ["bench", "--frobnicate"], ["bench", "--dtype", "fp8", *FAST]])
def test_bad_usage_exits_2(capsys, argv):
    assert run(capsys, *argv)[0] == 2


def test_help_exits_0(capsys):
    code, out, _ = run(capsys, "profile", "--help")
    assert code == 0
    assert "do not add blocks and leaves" in out  # the per-layer timing doc is in the help


# --- bench ----------------------------------------------------------------------------------------------


DTYPE = "float16" if torch.cuda.is_available() else "float32"  # bench's default dtype per device


def test_bench_small_cpu_writes_results_contract(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # compiled here, not served
    out_file = tmp_path / "cpu.json"
    code, out, err = run(capsys, "bench", "--models", "tiny-mlp", "--modes", "eager,inductor,tritonfuse",
                         "--out", str(out_file), *FAST)
    assert code == 0, err
    doc = json.loads(out_file.read_text())
    for field in results.HEADER_FIELDS:
        assert field in doc
    assert doc["command"].startswith("tritonfuse bench --models tiny-mlp")
    rows = {r["mode"]: r for r in doc["models"]}
    assert list(rows) == ["eager", "inductor", "tritonfuse"]
    for r in rows.values():
        assert set(results.ROW_FIELDS) <= set(r), set(results.ROW_FIELDS) - set(r)
        assert r["status"] == "ok" and r["model"] == "tiny-mlp" and r["dtype"] == DTYPE and r["batch"] == 8
        assert r["ms"] > 0 and r["cosine"] > 0.99999
    assert rows["eager"]["speedup_vs_eager"] == 1.0 and rows["eager"]["counters"] is None
    assert rows["inductor"]["speedup_vs_inductor"] == 1.0 and rows["inductor"]["compile_s"] > 0
    eager_r, ours_r = rows["eager"].get("ms_rounds"), rows["tritonfuse"].get("ms_rounds")
    if eager_r and ours_r:  # (a GPU's default: the modes timed again in interleaved rounds, speedups per round)
        ratios = [e / q for e, q in zip(eager_r, ours_r)]
        assert math.isclose(rows["tritonfuse"]["speedup_vs_eager"], statistics.median(ratios))
    else:
        assert math.isclose(rows["tritonfuse"]["speedup_vs_eager"], rows["eager"]["ms"] / rows["tritonfuse"]["ms"])
    # Linear + GELU is one linear_act site, served by the Triton kernel
    assert rows["tritonfuse"]["counters"]["linear_act"] == {"matched": 1, "replaced": 1, "fallback": 0}
    assert rows["tritonfuse"]["fallback_reasons"] == {}
    assert rows["tritonfuse"]["sqnr_db"] > 60
    # the part of its compile that was tritonfuse's passes (nothing timed on the CPU)
    parts = rows["tritonfuse"]["compile_parts"]
    assert parts["graphs"] == 1 and 0 < parts["passes_s"] <= rows["tritonfuse"]["compile_s"], parts
    assert parts["timed"] == parts["recalled"] == parts["deferred"] == 0 and "compile_parts" not in rows["inductor"]
    # compiled a second time with warm caches: timed, and the same sites found (else recompile_counters)
    assert "recompile_s" not in rows["eager"]
    assert all(rows[m]["recompile_s"] > 0 and "recompile_counters" not in rows[m] for m in ("inductor", "tritonfuse"))
    assert "tiny-mlp" in out and "1/1 linear_act:1" in out
    # the README table renders from the file
    md = results.readme([out_file])
    assert f"| tiny-mlp (small) | {DTYPE} | 8 |" in md and "tritonfuse bench --models tiny-mlp" in md


def test_bench_rounds_time_the_modes_interleaved(capsys, tmp_path):
    # the float and int8 modes both compile with tritonfuse's backend: kept side by side, each must keep its
    # own compiled graph (sharing one backend, the int8 mode would run the float graph)
    out_file = tmp_path / "r.json"
    code, out, err = run(capsys, "bench", "--models", "tiny-mlp", "--modes", "eager,tritonfuse,tritonfuse-int8",
                         "--rounds", "3", "--out", str(out_file), *FAST)
    assert code == 0, err
    rows = {r["mode"]: r for r in results.load(out_file)["models"]}
    for r in rows.values():
        assert "interleave_error" not in r, r["interleave_error"]
        assert len(r["ms_rounds"]) == 3 and r["ms_single"] > 0
        assert r["ms"] == sorted(r["ms_rounds"])[1]
        assert math.isclose(r["spread_pct"], 100 * (max(r["ms_rounds"]) - min(r["ms_rounds"])) / r["ms"])
    # speedups: the median of the per-round ratios (each round's timings are neighbours in time)
    ratios = sorted(e / q for e, q in zip(rows["eager"]["ms_rounds"], rows["tritonfuse-int8"]["ms_rounds"]))
    assert math.isclose(rows["tritonfuse-int8"]["speedup_vs_eager"], ratios[1])
    assert rows["tritonfuse-int8"]["speedup_vs_eager_range"] == [ratios[0], ratios[2]]
    assert "the median of 3 rounds timing the modes interleaved" in out


def test_readme_table_shows_the_rounds():
    ind = {"model": "m", "mode": "inductor", "dtype": "float16", "batch": 8, "ms": 2.0, "spread_pct": 12.4}
    tf = {"model": "m", "mode": "tritonfuse", "dtype": "float16", "batch": 8, "ms": 1.8, "spread_pct": 3.0,
          "speedup_vs_inductor": 1.07, "speedup_vs_inductor_range": [0.99, 1.12],
          "counters": {"linear_act": {"matched": 2, "replaced": 1, "fallback": 1}}}
    table = results.model_table({"models": [ind, tf]})
    assert "| 2.00 ±12% | 1.80 ±3% (1.07x, rounds 0.99-1.12) |" in table
    del tf["spread_pct"], tf["speedup_vs_inductor_range"]
    assert "| 1.80 (1.07x) |" in results.model_table({"models": [ind, tf]})


def test_bench_rounds_keep_own_timing_when_a_compile_differs(capsys, monkeypatch):
    # the second compile finds other sites than the row's: that mode keeps the timing of its own compile
    import tritonfuse

    real = tritonfuse.counters
    calls = []

    def counters():
        calls.append(1)
        c = real()
        return {**c, "linear_act": {**c["linear_act"], "replaced": 0}} if len(calls) > 1 else c

    monkeypatch.setattr(tritonfuse, "counters", counters)
    code, out, err = run(capsys, "bench", "--models", "tiny-mlp", "--modes", "eager,tritonfuse", "--rounds", "2",
                         *FAST)
    assert code == 0, err
    assert "tiny-mlp tritonfuse: own timing kept: compiled again, other sites" in out
    assert "ms: the median" not in out  # one mode left: nothing to interleave


def test_results_merge_replaces_own_rows_keeps_others(tmp_path):
    path = tmp_path / "r.json"

    def row(model, mode, ms):
        return {"model": model, "mode": mode, "dtype": "float16", "batch": 8, "ms": ms, "compile_s": None,
                "peak_mem_gb": None, "speedup_vs_eager": None, "speedup_vs_inductor": None, "cosine": None,
                "sqnr_db": float("inf"), "counters": None}

    results.write([row("a", "eager", 1.0), row("a", "inductor", 2.0)], path, "cmd1")
    results.write([row("a", "inductor", 3.0), row("b", "eager", 4.0)], path, "cmd2")
    doc = results.load(path)  # strict JSON: inf was written as null
    got = {(r["model"], r["mode"]): (r["ms"], r["command"]) for r in doc["models"]}
    assert got == {("a", "eager"): (1.0, "cmd1"), ("a", "inductor"): (3.0, "cmd2"), ("b", "eager"): (4.0, "cmd2")}
    assert doc["command"] == "cmd2" and doc["models"][0]["sqnr_db"] is None


def test_results_load_rejects_missing_fields(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"gpu": "x", "torch": "", "triton": "", "commit": "", "date": "", "command": "",
                                "models": [{"model": "a", "mode": "eager"}]}))
    with pytest.raises(ValueError, match="row 0 misses dtype"):
        results.load(path)


def test_failing_mode_is_reported_others_still_run(capsys, tmp_path, monkeypatch):
    real = cli._compiled

    def broken(model, mode):
        if mode == "inductor":
            raise RuntimeError("simulated compile failure")
        return real(model, mode)

    monkeypatch.setattr(cli, "_compiled", broken)
    out_file = tmp_path / "r.json"
    code, out, err = run(capsys, "bench", "--models", "tiny-mlp", "--modes", "eager,inductor", "--out",
                         str(out_file), *FAST)
    assert code == 1
    assert "FAILED: RuntimeError: simulated compile failure" in out
    rows = {r["mode"]: r for r in results.load(out_file)["models"]}
    assert rows["inductor"]["status"] == "failed" and rows["inductor"]["ms"] is None
    assert "simulated compile failure" in rows["inductor"]["error"]
    assert rows["eager"]["status"] == "ok" and rows["eager"]["ms"] > 0
    assert rows["eager"]["speedup_vs_inductor"] is None


def test_missing_optional_dependency_skips_the_model(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision now raises ImportError
    code, out, err = run(capsys, "bench", "--models", "resnet50,tiny-mlp", "--modes", "eager", *FAST)
    assert code == 0
    assert "skipping resnet50: needs torchvision (pip install torchvision)" in err
    assert "tiny-mlp" in out and "resnet50" not in out


def test_train_step_compares_losses(capsys):
    code, out, err = run(capsys, "bench", "--train", "--models", "tiny-mlp,vit_b_16", "--modes",
                         "eager,tritonfuse", *FAST)
    assert code == 0, err
    assert "skipping vit_b_16: --train applies to" in err
    lines = [l for l in out.splitlines() if l.startswith("tiny-mlp")]
    assert len(lines) == 2 and "loss" in out


def test_plot_without_matplotlib_says_so(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli.plot([], str(tmp_path / "p.png")) is False
    assert "--plot needs matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()


# --- profile and explain --------------------------------------------------------------------------------


def test_profile_names_layers_and_kernels(capsys):
    code, out, err = run(capsys, "profile", "tiny-mlp", "--modes", "eager,tritonfuse", *FAST)
    assert code == 0, err
    rows = {l.split()[0]: l for l in out.splitlines()[2:] if l.strip() and not l.startswith(("Times", "Each"))}
    assert set(rows) == {"(model)", "0", "1", "2"}
    assert "Sequential" in rows["(model)"] and "linear_act[gelu]" in rows["(model)"]
    assert "Linear" in rows["0"] and "GELU" in rows["1"]
    # a Linear or a GELU alone is no linear_act site: Inductor serves it
    assert rows["0"].rstrip().endswith("inductor") and rows["1"].rstrip().endswith("inductor")


def test_profile_groups_repeated_blocks():
    work = zoo.get("bert-base").make(small=True)
    device = torch.empty(0).device  # the GPU run's default device is cuda
    model = work.model.to(device)
    inp = work.inputs(model, device, torch.float32, 0)
    layers = {l.key: l for l in cli.capture_layers(model, inp)}
    assert layers["encoder.layer.*"].calls == 2 and layers["encoder.layer.*"].kind == "block"
    assert layers["encoder.layer.*.attention.self.query"].calls == 2
    assert layers["(model)"].kind == "model"


def test_explain_lists_replaced_sites(capsys):
    code, out, err = run(capsys, "explain", "tiny-mlp", *FAST)
    assert code == 0, err
    assert "linear_act[gelu]" in out
    assert "graph 0 linear_act" in out and "M=8 K=64 N=256" in out


# --- the helpers ----------------------------------------------------------------------------------------


def test_accuracy_metrics():
    ref = torch.randn(1000, dtype=torch.float64)
    noise = torch.randn(1000, dtype=torch.float64) * 1e-3
    acc = cli.accuracy((ref + noise).float(), ref.float())
    expect_sqnr = 20 * math.log10(ref.norm().item() / noise.norm().item())
    assert abs(acc["sqnr_db"] - expect_sqnr) < 0.1
    assert 0.999999 < acc["cosine"] <= 1.0
    assert acc["max_rel_err"] == pytest.approx(noise.abs().max().item() / ref.abs().max().item(), rel=1e-2)
    assert cli.accuracy(ref.float(), ref.float())["sqnr_db"] is None  # identical
    bad = ref.float().clone()
    bad[3] = float("nan")
    assert cli.accuracy(bad, ref.float())["nonfinite"] is True


def test_time_calls_runs_prep_before_every_call():
    import gc

    log = []
    ms, n = cli.time_calls(lambda i: log.append(("call", i, gc.isenabled())), torch.device("cpu"), iters=4,
                           prep=lambda i: log.append(("prep", i)))
    assert n == 4 and ms >= 0
    assert log[:2] == [("prep", 0), ("call", 0, True)]  # warm-up
    # the timed calls run with the garbage collector off, and it is on again after
    assert log[2:] == [x for i in range(4) for x in (("prep", i), ("call", i, False))]
    assert gc.isenabled()


def test_results_merge_of_a_fetched_file_keeps_its_header(tmp_path):
    src, dest = tmp_path / "fetched.json", tmp_path / "dest.json"
    row = {"model": "a", "mode": "eager", "dtype": "float16", "batch": 8, "ms": 1.5, "compile_s": None,
           "peak_mem_gb": 0.5, "speedup_vs_eager": 1.0, "speedup_vs_inductor": None, "cosine": 1.0,
           "sqnr_db": 50.0, "counters": None}
    src.write_text(json.dumps({"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11", "triton": "3.6", "commit": "abc",
                               "date": "2026-01-01T00:00:00Z", "command": "tritonfuse bench x", "models": [row]}))
    assert results.main(["--merge", "--into", str(dest), str(src)]) == 0
    doc = results.load(dest)
    assert (doc["gpu"], doc["torch"], doc["commit"], doc["command"]) == ("NVIDIA H100 80GB HBM3", "2.11", "abc",
                                                                      "tritonfuse bench x")
    assert doc["models"][0]["ms"] == 1.5 and doc["models"][0]["command"] == "tritonfuse bench x"


def test_zoo_vit_classifier_is_not_zero():
    # torchvision zero-initializes ViT's head; all-zero logits would make every accuracy column "exact"
    pytest.importorskip("torchvision")
    from tritonfuse import zoo

    spec = zoo.get("vit_b_16")
    work = spec.make(small=True, batch=spec.batch_for(small=True))
    assert work.model.heads.head.weight.abs().sum() > 0


def test_readme_results_match_the_results_files():
    # every section `python -m tritonfuse.results --readme` renders from benchmarks/results/ is in the README
    readme = (results.RESULTS_DIR.parents[1] / "README.md").read_text()
    sections = [s.strip() for s in re.split(r"(?=^### )", results.readme(), flags=re.M) if s.strip()]
    assert sections
    missing = [s.splitlines()[0] for s in sections if s not in readme]
    assert not missing, f"README results out of date (python -m tritonfuse.results --readme): {missing}"


def test_profile_rounds_time_the_modes_interleaved(capsys, monkeypatch):
    # each layer's modes stay compiled side by side and are timed again in rounds: the speedup column is
    # the median of the per-round ratios
    seen = []
    real = cli._profile_rounds

    def spy(layer, fns, row, rounds, inp, args):
        real(layer, fns, row, rounds, inp, args)
        seen.append(row)

    monkeypatch.setattr(cli, "_profile_rounds", spy)
    code, out, err = run(capsys, "profile", "tiny-mlp", "--modes", "inductor,tritonfuse", "--rounds", "3", *FAST)
    assert code == 0, err
    assert "timed in 3 interleaved rounds" in out
    model = next(r for r in seen if r["layer"] == "(model)")
    assert all(len(t) == 3 for t in model["ms_rounds"].values()) and "rounds_error" not in model
    ratios = sorted(a / b for a, b in zip(model["ms_rounds"]["inductor"], model["ms_rounds"]["tritonfuse"]))
    assert model["vs_inductor"] == ratios[1]
    line = next(l for l in out.splitlines() if l.startswith("(model)"))
    assert f"{ratios[1]:.2f}x" in line and "linear_act[gelu]" in line
