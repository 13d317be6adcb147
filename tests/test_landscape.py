"""Trajectory PCA against numpy's SVD of the stacked checkpoints, principal directions, landscapes checked
against models built independently (written, reloaded by transformers, evaluated), filter normalisation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from qrobust.averaging.stream import write_checkpoint
from qrobust.errors import ConfigError
from qrobust.evaluate import evaluate_loss
from qrobust.geometry import pca as pca_mod
from qrobust.workflows.landscape import filter_normalized, trajectory_landscape
from qrobust.geometry.pca import directions, trajectory_pca
from qrobust.models import load_checkpoint


def _folders(tiny_run):
    return sorted((tiny_run / "checkpoints" / "main").iterdir()) + sorted((tiny_run / "checkpoints" / "decay8").iterdir())


def _stacked(folders, tensors):
    sds = [load_file(str(f / "model.safetensors")) for f in folders]
    return np.stack([np.concatenate([sd[t].double().numpy().reshape(-1) for t in tensors]) for sd in sds])


def test_pca_matches_numpy_svd_and_chunking_changes_nothing(tiny_run, monkeypatch):
    folders = _folders(tiny_run)
    pca = trajectory_pca(folders)
    X = _stacked(folders, pca.tensors)
    assert pca.n_params == X.shape[1]
    Xc = X - X.mean(0)
    U, S, _ = np.linalg.svd(Xc, full_matrices=False)
    np.testing.assert_allclose(pca.eigenvalues[:3], (S ** 2)[:3], rtol=1e-9)
    np.testing.assert_allclose(pca.explained_variance_ratio[:3], (S ** 2 / (S ** 2).sum())[:3], rtol=1e-9)
    for k in range(2):  # coordinates U·S, up to the sign of each component
        ours, ref = pca.coords[:, k].numpy(), U[:, k] * S[k]
        assert np.allclose(ours, ref, rtol=1e-6, atol=1e-6) or np.allclose(ours, -ref, rtol=1e-6, atol=1e-6)
    monkeypatch.setattr(pca_mod, "CHUNK", 777)  # many row chunks per tensor: the same numbers
    small = trajectory_pca(folders)
    np.testing.assert_allclose(small.eigenvalues, pca.eigenvalues, rtol=1e-9, atol=1e-9)


def test_directions_are_orthonormal_and_give_the_coordinates(tiny_run):
    folders = _folders(tiny_run)
    pca = trajectory_pca(folders)
    d = directions(pca, 2)
    D = np.stack([np.concatenate([dk[t].double().numpy().reshape(-1) for t in pca.tensors]) for dk in d])
    np.testing.assert_allclose(D @ D.T, np.eye(2), atol=1e-5)
    X = _stacked(folders, pca.tensors)
    np.testing.assert_allclose((X - X.mean(0)) @ D.T, pca.coords[:, :2].numpy(), rtol=1e-4, atol=1e-4)


def test_pca_landscape_losses_equal_independently_built_models(tiny_run, tmp_path):
    import qrobust
    r = qrobust.landscape(str(tiny_run), tmp_path / "land", grid=3, n_blocks=2, progress=False)
    land = r["landscape"]
    assert (tmp_path / "land" / "landscape_pca.png").is_file() and (tmp_path / "land" / "pca_projection.png").is_file()
    assert json.loads((tmp_path / "land" / "landscape.json").read_text())["landscape"]["loss"] == land["loss"]
    folders = _folders(tiny_run)
    pca = trajectory_pca(folders)
    d1, d2 = directions(pca, 2)
    from qrobust.api import eval_blocks
    blocks = eval_blocks(folders[-1], n_blocks=2)
    for j, i in ((0, 0), (1, 1), (2, 1)):  # GPT-NeoX renames embed_out on load: transformers maps it here
        x, y = land["xs"][i], land["ys"][j]
        sd = {t: pca.mean[t] + x * d1[t] + y * d2[t] for t in pca.tensors}
        ck = write_checkpoint(sd, folders[-1], tmp_path / f"p{i}{j}", {"grid": [x, y]})
        ref = evaluate_loss(load_checkpoint(ck), blocks).loss
        assert land["loss"][j][i] == pytest.approx(ref, rel=1e-5), (i, j)
    runs = {p["run"] for p in r["points"]}
    assert runs == {"main", "decay8"} and len(r["explained_variance_ratio"]) == len(r["checkpoints"])


def test_random_plane_centre_is_the_checkpoint_and_filters_are_normalised(tiny_run, tmp_path):
    r = trajectory_landscape(str(tiny_run), tmp_path / "rnd", plane="random", grid=3, n_blocks=2,
                             center="main/step-0000008", progress=False)
    ck = tiny_run / "checkpoints" / "main" / "step-0000008"
    from qrobust.api import eval_blocks
    ref = evaluate_loss(load_checkpoint(ck), eval_blocks(ck, n_blocks=2)).loss
    assert r["landscape"]["loss"][1][1] == pytest.approx(ref, rel=1e-6)  # grid [-1, 0, 1]: the centre
    w = {"a": torch.randn(4, 6), "b": torch.randn(5)}
    d = filter_normalized(w, seed=3)
    assert torch.allclose(d["a"].norm(dim=1), w["a"].norm(dim=1), rtol=1e-5) and not d["b"].any()
    with pytest.raises(ConfigError, match="not a checkpoint"):
        trajectory_landscape(str(tiny_run), tmp_path / "x", plane="random", center="nope", progress=False)
    with pytest.raises(ConfigError, match="no checkpoint"):
        trajectory_landscape(str(tiny_run), tmp_path / "x", runs=["nope"], progress=False)


def test_cli_landscape(tiny_run, tmp_path, capsys):
    from qrobust.cli import main
    assert main(["landscape", str(tiny_run), "--out", str(tmp_path / "l"), "--grid", "3", "--n-blocks", "1",
                 "--run", "main", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "PCA of 3 checkpoints" in out and "landscape (pca, 3x3)" in out
    one = tiny_run / "checkpoints" / "main" / "step-0000004"
    assert main(["landscape", str(one), "--out", str(tmp_path / "m"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at least 2 checkpoints" in err[0]
