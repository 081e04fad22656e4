"""`medmix bench` runs, compares like with like, and writes its JSON and chart."""
import json
import pathlib

import pytest

from medmix_ops import bench, cli


def test_bench_rows_and_speedups(tmp_path):
    result = bench.run("cpu", quick=True, names=("adm_mix", "policy_varimix"), e2e=False, progress=False)
    assert result["copy_bandwidth_gbps"] > 0 and result["device"].startswith("cpu")
    # the processor that ran them (a VM's CPU model can change under the same host name)
    assert result["processor"] and result["processor"] != "unknown"
    assert f"({result['processor']})" in bench.format_table(result).splitlines()[0]
    groups = {g["name"]: g for g in result["groups"]}
    assert set(groups) == {"adm_mix", "policy_varimix"}
    rows = {r["provider"]: r for r in groups["adm_mix"]["rows"]}
    assert {"medmix_cpu", "reference_eager", "varimix_loop"} <= set(rows)
    ours = rows["medmix_cpu"]
    assert not ours["baseline"] and set(ours["speedup"]) >= {"reference_eager", "varimix_loop"}
    assert ours["speedup"]["varimix_loop"] == rows["varimix_loop"]["median_ms"] / ours["median_ms"]
    assert ours["p20_ms"] <= ours["median_ms"] <= ours["p80_ms"]
    # ours and the loop also timed alone, back to back, and the table gives their ratio
    steady = groups["adm_mix"]["back_to_back_ms"]
    want_steady = {"medmix_cpu", "medmix_cpu_out", "varimix_loop"} | ({"reference_compiled"} & set(rows))
    assert set(steady) == want_steady and min(steady.values()) > 0
    text = bench.format_table(result)
    assert "adm_mix" in text and "speed-up vs baselines" in text
    want = f"medmix_cpu_out {steady['varimix_loop'] / steady['medmix_cpu_out']:.1f}x varimix_loop"
    assert "back to back (each alone, steady state)" in text and want in text
    md = bench.summary_markdown(result)
    assert "| adm_mix |" in md
    path = bench.save_json(result, str(tmp_path / "r.json"))
    assert json.load(open(path))["groups"][0]["rows"]
    assert (tmp_path / "p.png").exists() is False
    bench.save_plot(result, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").exists()


def test_bench_command(tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = cli.main(["bench", "--quick", "--ops", "patch_ratio_pool", "--no-end-to-end", "--json", str(out)])
    assert rc == 0 and json.loads(out.read_text())["groups"][0]["name"] == "patch_ratio_pool"
    assert "medmix_cpu" in capsys.readouterr().out


def test_bench_cuda_without_a_gpu_is_a_clear_error(capsys):
    import torch

    if torch.cuda.is_available():
        return
    rc = cli.main(["bench", "--device", "cuda", "--quick"])
    assert rc == 2 and "no CUDA device is available" in capsys.readouterr().err


def recording_providers(names, calls):
    """Providers that append their name to `calls`, and one more, "bad", that raises."""
    def make(name):
        return lambda: calls.append(name)

    def broken():
        raise RuntimeError("peer exploded")

    return {**{n: make(n) for n in names}, "bad": broken}


def test_measure_interleaved_rotates_and_reports_failures():
    calls = []
    timed = bench.measure_interleaved(recording_providers("abc", calls), "cpu", budget_s=0.0,
                                      max_rounds=6, warmup=1)
    assert isinstance(timed["bad"], RuntimeError)
    assert all(len(timed[k]) == 3 for k in "abc")  # budget 0: the minimum of three rounds
    rounds = [calls[3 + 3 * i: 6 + 3 * i] for i in range(3)]  # after one warm-up call each
    assert rounds == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]  # each goes first once
    assert all(t >= 0 for k in "abc" for t in timed[k])


def test_measure_back_to_back_times_each_alone_after_its_warmup():
    calls = []
    out = bench.measure_back_to_back(recording_providers("ab", calls), ("a", "b", "bad", "gone"),
                                     "cpu", budget_s=0.0, max_reps=4)
    assert set(out) == {"a", "b"} and all(v >= 0 for v in out.values())
    n = bench.BACK_TO_BACK_WARMUP + 3  # warm-up calls, then the minimum of three timed ones
    assert calls == ["a"] * n + ["b"] * n


def test_measure_interleaved_counts_page_faults_per_call():
    """Per provider, the minor page faults of its timed calls only: one that touches 256 fresh
    pages per call reports at least that many, an idle one next to it about none."""
    if bench.minor_faults() is None:
        pytest.skip("no getrusage here")
    import mmap

    def touch_fresh_pages():
        with mmap.mmap(-1, 256 * mmap.PAGESIZE) as m:  # anonymous: never a page already there
            for k in range(0, len(m), mmap.PAGESIZE):
                m[k] = 1

    faults = {}
    timed = bench.measure_interleaved({"touch": touch_fresh_pages, "idle": lambda: None}, "cpu",
                                      budget_s=0.0, max_rounds=5, warmup=1, faults=faults)
    assert set(faults) == {"touch", "idle"} and len(timed["touch"]) == 3
    assert faults["touch"] >= 256
    assert faults["idle"] < 32


def test_results_name_the_commit_measured(monkeypatch):
    """The JSON records HEAD (a 40-hex sha here, in a git checkout) unless MEDMIX_COMMIT names
    it: the GPU machine measures a copy of the tree without .git."""
    monkeypatch.delenv("MEDMIX_COMMIT", raising=False)
    head = bench._commit().removesuffix("-dirty")
    if head == "unknown":
        pytest.skip("not a git checkout")
    assert len(head) == 40 and int(head, 16) >= 0
    monkeypatch.setenv("MEDMIX_COMMIT", "0123abc")
    assert bench._commit() == "0123abc"


def test_gpu_session_selects_every_gpu_only_test():
    """benchmarks/gpu_session.sh runs the GPU-only tests first, picked by a -k expression: a GPU
    test whose id it does not match would only run in the second stage, which a short GPU
    session may never reach. Every test skipped without CUDA must match it by name."""
    import ast
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent
    script = (root.parent / "benchmarks" / "gpu_session.sh").read_text()
    keywords = re.search(r'GPU_TESTS="([^"]+)"', script).group(1).split(" or ")
    gpu_only = []
    for path in sorted(root.glob("test_*.py")):
        src = path.read_text()
        for node in ast.parse(src).body:
            if isinstance(node, ast.FunctionDef) and any(
                    "HAS_CUDA" in ast.unparse(d) or "needs_gpu" in ast.unparse(d) for d in node.decorator_list):
                gpu_only.append(f"{path.stem}::{node.name}")
    assert len(gpu_only) >= 8, gpu_only  # the scan found the GPU tests (not vacuous)
    missed = [t for t in gpu_only if not any(k in t for k in keywords)]
    assert not missed, f"GPU-only tests the GPU stage would not select: {missed}"


def _rows(**medians):
    return [dict(provider=k, median_ms=v) for k, v in medians.items()]


def test_gpu_preference_is_the_faster_gpu_kernel_per_op():
    result = dict(groups=[
        dict(name="gaussian_blend", rows=_rows(medmix_cuda=1.0, medmix_triton=2.0, reference_eager=9.0)),
        # saliency: two groups, geometric mean sqrt(3 * 1.5) > 1
        dict(name="saliency_spectral_residual", rows=_rows(medmix_cuda=3.0, medmix_triton=1.0)),
        dict(name="saliency_fine_grained", rows=_rows(medmix_cuda=3.0, medmix_triton=2.0)),
        # the out= rows are not the op's fresh-output call; the fresh rows decide
        dict(name="adm_mix", rows=_rows(medmix_cuda=2.0, medmix_triton=1.0, medmix_cuda_out=0.1)),
        dict(name="patch_ratio_pool", rows=_rows(medmix_cuda=1.0)),  # no Triton row: left out
        dict(name="policy_mixup", rows=_rows(medmix_cuda=1.0, medmix_triton=9.0)),  # not an op
    ])
    pref = bench.gpu_preference(result)
    assert {op: v["choice"] for op, v in pref.items()} == {
        "gaussian_blend": "cuda", "saliency": "triton", "adm": "triton"}
    assert pref["saliency"]["cuda_over_triton"] == pytest.approx(4.5 ** 0.5)
    assert pref["saliency"]["groups"] == 2
    text = "\n".join(bench.format_gpu_preference(result))
    assert "adm" in text and "update medmix_ops/_backend.py" in text
    assert bench.format_gpu_preference(dict(groups=[result["groups"][4]])) == []  # CPU results


def test_auto_backend_follows_the_latest_committed_gpu_results():
    """GPU_PREFERENCE must be what the newest full GPU results JSON under benchmarks/results/
    measured; skipped until a GPU has produced one."""
    from medmix_ops import _backend

    results = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    gpu = []
    for path in results.glob("*.json"):
        data = json.loads(path.read_text())
        if data.get("device_kind") == "cuda" and "groups" in data and not data.get("quick"):
            gpu.append((data["date"], path.name, data))
    if not gpu:
        pytest.skip("no full GPU benchmark results committed yet")
    date, name, latest = max(gpu, key=lambda t: t[:2])
    measured = {op: v["choice"] for op, v in bench.gpu_preference(latest).items()}
    assert measured, f"{name} has no medmix_cuda / medmix_triton rows"
    assert {op: _backend.GPU_PREFERENCE[op] for op in measured} == measured, name
