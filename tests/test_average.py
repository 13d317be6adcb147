"""Weight averaging: exact means, LAWA/EMA plans, greedy soup on a constructed case, streaming vs in-memory,
peak memory with many inputs, bad input, CLI and the averaged trajectory in a sweep."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from qrobust.averaging import average, ema_weights, greedy_soup, mean_of, weighted_mean
from qrobust.averaging.averagers import plan_lawa
from qrobust.averaging.stream import PROVENANCE
from qrobust.cli import main
from qrobust.errors import CheckpointError, ConfigError
from qrobust.models import build_model
from qrobust.trajectory import Checkpoint, Trajectory


def _save(model, path: Path, dtype=torch.float32) -> Path:
    model.to(dtype).save_pretrained(str(path), safe_serialization=True)
    return path


def _models(tmp_path, n=3, arch="llama", dtype=torch.float32, **kw):
    return [_save(build_model(arch, "micro", vocab_size=64, max_positions=32, seed=i, **kw), tmp_path / f"m{i}", dtype)
            for i in range(n)]


def test_weighted_mean_is_exact(tmp_path):
    paths = _models(tmp_path)
    sds = [load_file(str(p / "model.safetensors")) for p in paths]
    w = [0.5, 0.3, 0.2]
    got = weighted_mean(paths, w)
    for k, t in got.items():
        ref = sum(wi * sd[k].double() for wi, sd in zip(w, sds))
        assert t.dtype == torch.float32 and torch.allclose(t.double(), ref, atol=1e-7), k


def test_streaming_equals_in_memory_and_keeps_dtype(tmp_path):
    paths = _models(tmp_path, dtype=torch.bfloat16)
    got = weighted_mean(paths, [1 / 3] * 3)
    ref = mean_of([load_file(str(p / "model.safetensors")) for p in paths])
    assert set(got) == set(ref)
    for k in got:
        assert got[k].dtype == torch.bfloat16 and torch.equal(got[k], ref[k]), k


def test_identical_and_integer_tensors_are_copied_exactly(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for p, x in ((a, 1.0), (b, 3.0)):
        p.mkdir()
        (p / "config.json").write_text('{"model_type": "toy"}')
        save_file({"w": torch.full((2, 2), x), "mask": torch.tensor([1, 0, 1]), "freq": torch.tensor([0.1, 0.7])},
                  str(p / "model.safetensors"))
    got = weighted_mean([a, b], [0.5, 0.5])
    assert torch.equal(got["w"], torch.full((2, 2), 2.0))
    assert torch.equal(got["mask"], torch.tensor([1, 0, 1])) and torch.equal(got["freq"], torch.tensor([0.1, 0.7]))
    save_file({"w": torch.ones(2, 2), "mask": torch.tensor([1, 1, 1]), "freq": torch.tensor([0.1, 0.7])},
              str(b / "model.safetensors"))
    with pytest.raises(CheckpointError, match="'mask' .* not floating point"):
        weighted_mean([a, b], [0.5, 0.5])


def _traj(n: int) -> Trajectory:
    return Trajectory("t", [Checkpoint(f"s{i}", f"/x/{i}", step=10 * i) for i in range(n)])


def test_lawa_and_ema_plans():
    jobs = plan_lawa(_traj(5), window=3)
    assert [(j.step, [c.step for c in j.inputs]) for j in jobs] == [(20, [0, 10, 20]), (30, [10, 20, 30]),
                                                                 (40, [20, 30, 40])]
    assert jobs[0].weights == [1 / 3] * 3 and jobs[0].run == "main-lawa3"
    jobs = plan_lawa(_traj(5), window=2, stride=2)
    assert [[c.step for c in j.inputs] for j in jobs] == [[0, 20], [10, 30], [20, 40]]
    assert ema_weights(3, 0.5) == [0.25, 0.25, 0.5]  # e2 = .5(.5 θ0 + .5 θ1) + .5 θ2
    assert sum(ema_weights(7, 0.9)) == pytest.approx(1)
    with pytest.raises(ConfigError, match="LAWA window 6 .* has 5"):
        plan_lawa(_traj(5), window=6)


def test_greedy_soup_constructed_case():
    """Loss (θ-1)²: D=0.8 (.04), A=1.25 (.0625), B=0.5 (.25), C=3 (4). Start {D}; {D,A} → 1.025 (.000625) kept;
    {D,A,B} → 0.85 (.0225) rejected; {D,A,C} → 1.683 (.467) rejected."""
    vals = {"A": 1.25, "B": 0.5, "C": 3.0, "D": 0.8}
    ing = list(vals)
    loss = lambda names: (sum(vals[n] for n in names) / len(names) - 1) ** 2  # noqa: E731
    kept, log = greedy_soup(ing, loss, [loss([n]) for n in ing])
    assert [ing[i] for i in kept] == ["D", "A"]
    assert [(ing[e["ingredient"]], e["kept"]) for e in log] == [("D", True), ("A", True), ("B", False), ("C", False)]
    assert log[1]["loss"] == pytest.approx(0.025 ** 2)


_PEAK = """
import sys, json, threading, time
from pathlib import Path
from qrobust.averaging import weighted_mean

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

paths = [Path(p) for p in json.loads(sys.argv[1])]
weighted_mean(paths[:2], [0.5, 0.5])  # warm up allocator and imports
base, peak, done = rss(), [0], threading.Event()

def watch():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)

t = threading.Thread(target=watch)
t.start()
out = weighted_mean(paths, [1 / len(paths)] * len(paths))
done.set()
t.join()
print(max(peak[0], rss()) - base)
"""


def test_peak_memory_stays_near_one_model_with_many_inputs(tmp_path):
    model = build_model("llama", "small", vocab_size=4096, max_positions=64, seed=0)
    size = sum(p.numel() * 4 for p in model.state_dict().values())
    paths = []
    for i in range(12):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)
        paths.append(str(_save(model, tmp_path / f"c{i}")))
    grow = int(subprocess.run([sys.executable, "-c", _PEAK, json.dumps(paths)], check=True, capture_output=True,
                              text=True).stdout.strip())
    # result (one model) + mapped pages of the inputs being read; loading all 12 would be 12x
    print(f"peak growth {grow / size:.2f}x one model")
    assert grow < 2 * size, (grow / size)


def test_bad_input_is_one_line(tmp_path):
    llama = _models(tmp_path / "l", n=1)[0]
    neox = _save(build_model("gpt_neox", "micro", vocab_size=64, max_positions=32), tmp_path / "neox")
    with pytest.raises(CheckpointError, match="different architectures"):
        weighted_mean([llama, neox], [0.5, 0.5])
    wide = _save(build_model("llama", "micro", vocab_size=80, max_positions=32), tmp_path / "wide")
    with pytest.raises(CheckpointError, match="different architectures: .* vocab_size"):
        weighted_mean([llama, wide], [0.5, 0.5])
    half = _save(build_model("llama", "micro", vocab_size=64, max_positions=32, seed=5), tmp_path / "half",
                 torch.bfloat16)
    with pytest.raises(CheckpointError, match="convert the checkpoints to one dtype"):
        weighted_mean([llama, half], [0.5, 0.5])
    cut = _save(build_model("llama", "micro", vocab_size=64, max_positions=32, seed=6), tmp_path / "cut")
    sd = load_file(str(cut / "model.safetensors"))
    gone = sorted(sd)[0]
    del sd[gone]
    save_file(sd, str(cut / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=f"'{gone}' is missing"):
        weighted_mean([llama, cut], [0.5, 0.5])
    with pytest.raises(CheckpointError, match="weights"):
        weighted_mean([llama, llama], [0.5, 0.6])
    a, b = tmp_path / "sa", tmp_path / "sb"  # same config, different shapes: the tensor check names it
    for p, shape in ((a, (2, 3)), (b, (3, 2))):
        p.mkdir()
        (p / "config.json").write_text('{"model_type": "toy"}')
        save_file({"w": torch.ones(shape)}, str(p / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"'w' has shape \[3, 2\] .* but \[2, 3\]"):
        weighted_mean([a, b], [0.5, 0.5])


def test_cli_lawa_then_sweep_the_averaged_trajectory(tiny_run, tmp_path, capsys):
    out = tmp_path / "avg"
    assert main(["average", "lawa", str(tiny_run), "--window", "2", "--run", "main", "--out", str(out),
                 "--quiet"]) == 0
    assert "2 averaged checkpoints in run(s) main-lawa2" in capsys.readouterr().out
    traj = json.loads((out / "trajectory.json").read_text())
    lawa = [c for c in traj["checkpoints"] if c["run"] == "main-lawa2"]
    assert [c["step"] for c in lawa] == [8, 12] and all(c["parent"] == "main" for c in lawa)
    ck = out / "checkpoints" / "main-lawa2" / "step-0000012"
    prov = json.loads((ck / "qrobust_average.json").read_text())
    assert [i["step"] for i in prov["inputs"]] == [8, 12] and [i["weight"] for i in prov["inputs"]] == [0.5, 0.5]
    main_ck = tiny_run / "checkpoints" / "main"
    a, b = (load_file(str(main_ck / f"step-{s:07d}" / "model.safetensors")) for s in (8, 12))
    got = load_file(str(ck / "model.safetensors"))
    assert all(torch.allclose(got[k], (a[k] + b[k]) / 2, atol=1e-7) for k in got)
    mtime = (ck / "model.safetensors").stat().st_mtime_ns
    assert main(["average", "lawa", str(tiny_run), "--window", "2", "--run", "main", "--out", str(out),
                 "--quiet"]) == 0
    assert (ck / "model.safetensors").stat().st_mtime_ns == mtime  # unchanged provenance: not rewritten
    from qrobust.sweeps import sweep
    s = sweep({"trajectory": str(out), "out": str(tmp_path / "res"), "bits": [3], "group_sizes": [16],
               "eval": {"n_blocks": 4}}, progress=False)
    assert s.checkpoints == 6 and s.records_written == 6  # 4 originals + 2 LAWA


def test_soups_over_runs(tiny_run, tmp_path):
    import qrobust
    traj = qrobust.average(str(tiny_run), "soup", tmp_path / "soup", progress=False)  # the public API
    soup = [c for c in traj if c.run == "soup"]
    assert len(soup) == 1
    prov = json.loads((Path(soup[0].path) / "qrobust_average.json").read_text())
    assert sorted(i["run"] for i in prov["inputs"]) == ["decay8", "main"]  # the last checkpoint of each run
    g = average([str(tiny_run)], "greedy-soup", tmp_path / "greedy", eval_config={"n_blocks": 4}, progress=False)
    gs = next(c for c in g if c.run == "greedy-soup")
    log = json.loads((Path(gs.path) / "qrobust_average.json").read_text())["params"]["log"]
    assert log[0]["kept"] and len(log) == 2
    with pytest.raises(ConfigError, match="one source"):
        average([str(tiny_run), str(tiny_run)], "lawa", tmp_path / "x", progress=False)


def test_sweep_averages_then_quantizes_then_evaluates(tiny_run, tmp_path):
    """One sweep config: LAWA(2) and EMA(0.5) runs of 'main' and a soup are made in OUT/averaged, swept beside
    the originals, and made only once (a re-run neither rewrites them nor re-quantizes)."""
    from qrobust.sweeps import sweep
    from qrobust.results.store import Store
    out = tmp_path / "res"
    cfg = {"trajectory": str(tiny_run), "out": str(out), "bits": [3], "group_sizes": [16], "eval": {"n_blocks": 4},
           "average": [{"averager": "lawa", "window": 2, "runs": ["main"]},
                       {"averager": "ema", "beta": 0.5, "runs": ["main"]}, {"averager": "soup"},
                       {"averager": "greedy-soup"}]}
    s = sweep(cfg, progress=False)
    # originals: main 4, 8, 12 + decay8 12; LAWA: 8, 12; EMA: 4, 8, 12; soup: 12; greedy soup: 12
    assert (s.checkpoints, s.averaged, s.records_written) == (11, 7, 11)
    ema12 = out / "averaged" / "checkpoints" / "main-ema0.5" / "step-0000012"
    main_ck = tiny_run / "checkpoints" / "main"
    a, b, c = (load_file(str(main_ck / f"step-{st:07d}" / "model.safetensors")) for st in (4, 8, 12))
    got = load_file(str(ema12 / "model.safetensors"))
    assert all(torch.allclose(got[k], 0.25 * a[k] + 0.25 * b[k] + 0.5 * c[k], atol=1e-6) for k in got)
    recs = Store(out).records()
    runs = sorted({r.checkpoint.run for r in recs})
    assert runs == ["decay8", "greedy-soup", "main", "main-ema0.5", "main-lawa2", "soup"]
    greedy = json.loads((out / "averaged" / "checkpoints" / "greedy-soup" / "step-0000012" / PROVENANCE).read_text())
    assert greedy["plan"]["eval"]["n_blocks"] == 4 and len(greedy["params"]["log"]) == 2
    assert {r.trajectory for r in recs} == {"t"}  # one trajectory: averaged runs plot beside the originals
    traj = json.loads(next((out / "trajectories").glob("*.json")).read_text())
    assert traj["runs"]["main-lawa2"]["averaged"] == {"averager": "lawa", "window": 2, "stride": 1}
    mtime = (ema12 / "model.safetensors").stat().st_mtime_ns
    again = sweep(cfg, progress=False)
    assert (again.averaged, again.records_written, again.model_loads) == (0, 0, 0)
    assert (ema12 / "model.safetensors").stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match="LAWA window 9"):
        sweep({**cfg, "average": [{"averager": "lawa", "window": 9}]}, progress=False)
