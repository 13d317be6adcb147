"""Numbers that must never be silently wrong (issue 15, part 3): a checkpoint whose files do not hold exactly
its model's tensors, a finite but extreme weight that makes the loss NaN, a sequence longer than the model's
positions, and a tokenizer that is not the model's are refused with one line, through ``eval``,
``eval --stream`` and ``sweep`` (in memory and streamed), and nothing is recorded for them. Valid folders
(tied embeddings, old Pythia files with stale buffers, GPT-2 files without the base-model prefix, fp16
storage, sharded files) still load, with the weights the files hold.

Checkpoints are untrained micro models with the byte tokenizer, rewritten with safetensors.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from qrobust.cli import main
from test_cli_errors import run_fail

SEQ_LEN = 32
MAX_POS = 64
GROUP = ["--bits", "4", "--group-size", "16"]


# ---------------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
    from qrobust.data.tokenizer import build_tokenizer
    return build_tokenizer("byte", [])


def _state() -> dict:
    from qrobust.config import DataConfig
    return {"step": 0, "data": DataConfig(seq_len=SEQ_LEN, max_chars=200_000).model_dump()}


def _save(model, tok, path: Path) -> Path:
    from qrobust.models import save_checkpoint
    return save_checkpoint(model, tok, path, extra=_state())


def _build(arch: str, vocab: int, **over):
    from qrobust.models import build_model
    return build_model(arch, "micro", vocab_size=vocab, max_positions=MAX_POS, overrides=over or None)


@pytest.fixture(scope="module")
def neox(tmp_path_factory, tok) -> Path:
    return _save(_build("gpt_neox", len(tok)), tok, tmp_path_factory.mktemp("neox") / "model")


def _rewrite(src: Path, dest: Path, edit) -> Path:
    """A copy of ``src`` whose model.safetensors is rewritten after ``edit(tensors)``."""
    shutil.copytree(src, dest)
    tensors = load_file(str(dest / "model.safetensors"))
    edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dest / "model.safetensors"),
              metadata={"format": "pt"})
    return dest


W = "gpt_neox.layers.1.mlp.dense_h_to_4h.weight"

BROKEN = {  # name -> (edit of the tensors, what the one line must name)
    "missing": (lambda t: t.pop(W), (W, "missing")),
    "missing-head": (lambda t: t.pop("embed_out.weight"), ("lm_head.weight", "missing")),  # untied: needed
    "unexpected": (lambda t: t.__setitem__("gpt_neox.layers.1.mlp.extra.weight", torch.zeros(4, 4)),
                   ("gpt_neox.layers.1.mlp.extra.weight", "unexpected")),
    "int32": (lambda t: t.__setitem__(W, (t[W] * 100).to(torch.int32)), (W, "I32")),
    "bool": (lambda t: t.__setitem__(W, t[W] > 0), (W, "BOOL")),
    "shape": (lambda t: t.__setitem__(W, t[W][:-1].clone()), (W, "shape", "[127, 32]", "[128, 32]")),
}


@pytest.fixture(scope="module")
def broken(tmp_path_factory, neox) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("broken")
    return {k: _rewrite(neox, root / k, edit) for k, (edit, _) in BROKEN.items()}


def _sweep_cfg(tmp_path: Path, ckpt: Path, out: Path, **extra) -> Path:
    cfg = {"trajectory": str(ckpt), "out": str(out), "methods": ["rtn"], "bits": [4], "group_sizes": [16],
           "eval": {"n_blocks": 2}, **extra}
    f = tmp_path / "sweep.yaml"
    f.write_text(json.dumps(cfg))
    return f


def _records(out: Path) -> list[Path]:
    """Every quantization / FP record a sweep wrote (nothing else in the results folder counts)."""
    return sorted(p for kind in ("records", "fp") for p in (out / kind).glob("*.json")) if out.exists() else []


def _ok(capsys, argv: list) -> dict:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    return json.loads(cap.out)


# ---------------------------------------------------------------------------------------------------------
# 1. the files must hold exactly the model's tensors
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(BROKEN))
@pytest.mark.parametrize("cmd", ["eval", "eval-stream", "quantize"])
def test_tensor_mismatch_refused(capsys, tmp_path, broken, case, cmd):
    path = broken[case]
    argv = {"eval": ["eval", path, "--n-blocks", "2"],
            "eval-stream": ["eval", path, "--stream", *GROUP, "--n-blocks", "2", "--device", "cpu"],
            "quantize": ["quantize", path, *GROUP, "--out", tmp_path / "q"]}[cmd]
    line = run_fail(capsys, argv, str(path), *BROKEN[case][1], code=2)
    assert "does not match its model" in line
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("case", ["missing", "int32", "shape", "unexpected"])
@pytest.mark.parametrize("stream", [False, True])
def test_tensor_mismatch_refused_by_sweep(capsys, tmp_path, broken, case, stream):
    out = tmp_path / "r"
    cfg = _sweep_cfg(tmp_path, broken[case], out, stream=stream, device="cpu")
    run_fail(capsys, ["sweep", cfg, "--quiet"], str(broken[case]), *BROKEN[case][1], code=2)
    assert _records(out) == []


def test_refusal_reads_headers_not_values(broken):
    """The dtype check reads the safetensors header: an integer weight is refused even where transformers
    would cast it without a word (its own loading report is empty for it)."""
    from transformers import AutoModelForCausalLM
    _, info = AutoModelForCausalLM.from_pretrained(str(broken["int32"]), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    from qrobust.errors import CheckpointError
    from qrobust.models import load_checkpoint
    with pytest.raises(CheckpointError, match="I32"):
        load_checkpoint(broken["int32"])


# ---------------------------------------------------------------------------------------------------------
# valid folders still load, with the files' weights
# ---------------------------------------------------------------------------------------------------------
def _same_weights(model, folder: Path, rename=lambda k: k) -> None:
    """Every tensor the model holds equals the file's (float32 copy), matched by name."""
    sd = model.state_dict()
    for f in folder.glob("*.safetensors"):
        for k, v in load_file(str(f)).items():
            if rename(k) in sd:
                assert torch.equal(sd[rename(k)].float(), v.float()), k


def test_tied_llama_loads_in_memory_and_streamed(capsys, tmp_path, tok):
    """tie_word_embeddings: the head is the embedding and is not in the files; nothing is missing."""
    path = _save(_build("llama", len(tok), tie_word_embeddings=True), tok, tmp_path / "tied")
    assert "lm_head.weight" not in load_file(str(path / "model.safetensors"))
    from qrobust.models import load_checkpoint
    model = load_checkpoint(path)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    fp = _ok(capsys, ["eval", path, "--n-blocks", "2", "--json", *GROUP])
    st = _ok(capsys, ["eval", path, "--n-blocks", "2", "--json", "--stream", "--device", "cpu", *GROUP])
    assert math.isfinite(fp["loss_fp"])
    assert st["loss_fp"] == fp["loss_fp"] and st["loss_q"] == fp["loss_q"]


def test_old_pythia_files_with_stale_buffers_load(capsys, tmp_path, neox):
    """Pythia's hub files still hold attention.bias / masked_bias / rotary_emb.inv_freq buffers the model no
    longer keeps: transformers drops them on load, so must qrobust (in memory and streamed)."""
    def stale(t):
        for i in range(2):
            p = f"gpt_neox.layers.{i}.attention."
            t[p + "bias"] = torch.tril(torch.ones(1, 1, MAX_POS, MAX_POS, dtype=torch.bool))
            t[p + "masked_bias"] = torch.tensor(-1e9)
            t[p + "rotary_emb.inv_freq"] = torch.ones(2)
    path = _rewrite(neox, tmp_path / "pythia-old", stale)
    ref = _ok(capsys, ["eval", neox, "--n-blocks", "2", "--json", *GROUP])
    got = _ok(capsys, ["eval", path, "--n-blocks", "2", "--json", *GROUP])
    st = _ok(capsys, ["eval", path, "--n-blocks", "2", "--json", "--stream", "--device", "cpu", *GROUP])
    assert got["loss_fp"] == ref["loss_fp"] and got["loss_q"] == ref["loss_q"]
    assert st["loss_fp"] == ref["loss_fp"]


def test_fp16_and_sharded_files_load(tmp_path, tok, neox):
    """Float weights stored in another float dtype are cast as usual; a sharded folder is one index."""
    from qrobust.models import load_checkpoint
    half = _rewrite(neox, tmp_path / "half", lambda t: t.update({k: v.half() for k, v in t.items()}))
    _same_weights(load_checkpoint(half), half, lambda k: "lm_head.weight" if k == "embed_out.weight" else k)
    model = _build("llama", len(tok))
    shard = tmp_path / "sharded"
    model.save_pretrained(str(shard), max_shard_size="40KB")
    tok.save_pretrained(str(shard))
    assert len(list(shard.glob("*.safetensors"))) > 1
    _same_weights(load_checkpoint(shard), shard)


def test_gpt2_files_without_base_prefix_load(tmp_path, tok):
    """GPT-2's hub files name tensors without 'transformer.' and hold no head (tied) but attn.bias buffers."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from qrobust.quant.pipelines.streamed.block_weights import WeightSource
    from qrobust.models import load_checkpoint
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=MAX_POS, n_embd=32, n_layer=2, n_head=2,
                                       bos_token_id=0, eos_token_id=0))
    path = tmp_path / "gpt2"
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))

    def hub_style(t):
        for k in list(t):
            v = t.pop(k)
            if k.startswith("transformer."):
                t[k[len("transformer."):]] = v
        for i in range(2):
            t[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, MAX_POS, MAX_POS))
    hub = _rewrite(path, tmp_path / "gpt2-hub", hub_style)
    assert "wte.weight" in load_file(str(hub / "model.safetensors"))
    loaded = load_checkpoint(hub)
    _same_weights(loaded, hub, lambda k: f"transformer.{k}")
    assert torch.equal(loaded.lm_head.weight, model.transformer.wte.weight)
    from qrobust.quant.pipelines.streamed.block_weights import skeleton
    from qrobust.checks import check_tensors
    sk = skeleton(hub, torch.float32, False)
    check_tensors(hub, sk, WeightSource(hub, sk).where)  # the streamed path's view agrees


# ---------------------------------------------------------------------------------------------------------
# 2. a non-finite loss is an error, never a record
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def huge(tmp_path_factory, neox) -> Path:
    """One finite weight of 1e30: every weight passes the NaN/Inf check, the outputs overflow."""
    def edit(t):
        t[W][3, 5] = 1e30
    path = _rewrite(neox, tmp_path_factory.mktemp("huge") / "model", edit)
    assert all(torch.isfinite(v).all() for v in load_file(str(path / "model.safetensors")).values())
    return path


@pytest.fixture(scope="module")
def extreme(tmp_path_factory, tok) -> Path:
    """A Llama whose FP loss is finite but whose 4-bit symmetric copy is not: a q_proj column of ±3e38 reads a
    feature its norm zeroes (0 × 3e38 = 0 in FP); quantized, that group's values overflow."""
    model = _build("llama", len(tok))
    with torch.no_grad():
        model.model.layers[1].input_layernorm.weight[5] = 0.0
        w = model.model.layers[1].self_attn.q_proj.weight
        w[0, 5], w[1, 5] = 3e38, -3e38
    return _save(model, tok, tmp_path_factory.mktemp("extreme") / "model")


@pytest.mark.parametrize("stream", [False, True])
def test_huge_weight_nan_loss_refused_by_eval(capsys, huge, stream):
    argv = ["eval", huge, "--n-blocks", "2"] + (["--stream", "--device", "cpu", *GROUP] if stream else [])
    line = run_fail(capsys, argv, str(huge), "not a finite number", code=2)
    assert "quantized" not in line


@pytest.mark.parametrize("stream", [False, True])
def test_huge_weight_nan_loss_refused_by_sweep(capsys, tmp_path, huge, stream):
    out = tmp_path / "r"
    cfg = _sweep_cfg(tmp_path, huge, out, stream=stream, device="cpu")
    run_fail(capsys, ["sweep", cfg, "--quiet"], str(huge), "not a finite number", code=2)
    assert _records(out) == []


@pytest.mark.parametrize("stream", [False, True])
def test_nan_quantized_loss_names_the_variant(capsys, tmp_path, extreme, stream):
    fp = _ok(capsys, ["eval", extreme, "--n-blocks", "2", "--json"])
    assert math.isfinite(fp["loss_fp"])
    argv = ["eval", extreme, "--n-blocks", "2", *GROUP] + (["--stream", "--device", "cpu"] if stream else [])
    run_fail(capsys, argv, str(extreme), "quantized as rtn-w4g16", "not a finite number", code=2)
    out = tmp_path / "r"
    cfg = _sweep_cfg(tmp_path, extreme, out, stream=stream, device="cpu")
    run_fail(capsys, ["sweep", cfg, "--quiet"], str(extreme), "quantized as rtn-w4g16", code=2)
    assert list((out / "records").glob("*.json")) == []  # no record for the variant


def test_nan_variant_keeps_records_written_before(capsys, tmp_path, extreme):
    """A sweep whose second variant overflows stops with one line; the first variant's record stays."""
    out = tmp_path / "r"
    cfg = _sweep_cfg(tmp_path, extreme, out, device="cpu", sym=False, bits=[4])
    capsys.readouterr()
    assert main(["sweep", str(cfg), "--quiet"]) == 0  # asymmetric 4-bit: finite
    kept = _records(out)
    assert len(kept) == 2
    cfg = _sweep_cfg(tmp_path, extreme, out, device="cpu", bits=[4])
    run_fail(capsys, ["sweep", cfg, "--quiet"], "quantized as rtn-w4g16", code=2)
    assert _records(out) == kept


def test_evaluate_loss_refuses_non_finite(huge):
    from qrobust.evaluate import NonFiniteLoss, evaluate_loss
    from qrobust.models import load_checkpoint
    with pytest.raises(NonFiniteLoss, match="my model"):
        evaluate_loss(load_checkpoint(huge), torch.randint(0, 257, (2, 8)), name="my model")


# ---------------------------------------------------------------------------------------------------------
# 3. sequences longer than the model's positions
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,mentions", [
    (["--seq-len", MAX_POS + 1], ("--seq-len", "max_position_embeddings", str(MAX_POS + 1))),
    (["--seq-len", MAX_POS + 1, "--stream", "--device", "cpu", *GROUP], ("--seq-len", str(MAX_POS + 1))),
    ([*GROUP, "--method", "gptq", "--calib-samples", "2", "--calib-seq-len", MAX_POS + 1],
     ("--calib-seq-len", str(MAX_POS + 1))),
    ([*GROUP, "--method", "gptq", "--calib-samples", "2", "--calib-seq-len", MAX_POS + 1, "--stream", "--device",
      "cpu"], ("--calib-seq-len", str(MAX_POS + 1))),
], ids=["eval", "eval-stream", "calibration", "calibration-stream"])
def test_seq_len_beyond_positions_refused_by_eval(capsys, neox, argv, mentions):
    run_fail(capsys, ["eval", neox, "--n-blocks", "2", *argv], str(neox), str(MAX_POS), *mentions, code=2)


def test_seq_len_at_the_limit_is_evaluated(capsys, neox):
    res = _ok(capsys, ["eval", neox, "--n-blocks", "2", "--seq-len", MAX_POS, "--json"])
    assert res["seq_len"] == MAX_POS


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("key", ["eval", "calibration"])
def test_seq_len_beyond_positions_refused_by_sweep(capsys, tmp_path, neox, stream, key):
    out = tmp_path / "r"
    extra = ({"eval": {"n_blocks": 2, "seq_len": MAX_POS + 1}} if key == "eval" else
             {"methods": ["gptq"], "calibration": {"n_samples": 2, "seq_len": MAX_POS + 1}})
    cfg = _sweep_cfg(tmp_path, neox, out, stream=stream, device="cpu", **extra)
    run_fail(capsys, ["sweep", cfg, "--quiet"], f"{key}.seq_len", str(MAX_POS + 1), str(neox), code=2)
    assert _records(out) == []


def test_max_positions_spellings():
    from qrobust.checks import max_positions
    assert max_positions({"n_positions": 1024}) == (1024, "n_positions")
    assert max_positions({"max_sequence_length": 4096}) == (4096, "max_sequence_length")
    assert max_positions({"max_position_embeddings": 2048, "n_positions": 9}) == (2048, "max_position_embeddings")
    assert max_positions({"hidden_size": 8}) is None


# ---------------------------------------------------------------------------------------------------------
# 4. tokenizer and model belong together
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wide(tmp_path_factory, tok) -> Path:
    """A model embedding 512 ids saved with the 257-token byte tokenizer (padding explains at most 384)."""
    return _save(_build("gpt_neox", 512), tok, tmp_path_factory.mktemp("wide") / "model")


@pytest.fixture(scope="module")
def other_eos(tmp_path_factory, neox) -> Path:
    """config.json names eos/bos id 5, an ordinary byte of the tokenizer (whose end-of-text token is 0)."""
    path = tmp_path_factory.mktemp("eos") / "model"
    shutil.copytree(neox, path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["eos_token_id"] = cfg["bos_token_id"] = 5
    (path / "config.json").write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def narrow(tmp_path_factory, tok) -> Path:
    """A model embedding 100 ids saved with the 257-token byte tokenizer (ids beyond its embedding)."""
    return _save(_build("gpt_neox", 100), tok, tmp_path_factory.mktemp("narrow") / "model")


@pytest.mark.parametrize("which,mentions", [("wide", ("257", "512", "vocab")),
                                            ("other_eos", ("eos_token_id 5", "id 0")),
                                            ("narrow", ("257", "100", "vocab"))])
@pytest.mark.parametrize("stream", [False, True])
def test_tokenizer_of_another_model_refused_by_eval(capsys, request, which, mentions, stream):
    path = request.getfixturevalue(which)
    argv = ["eval", path, "--n-blocks", "2"] + (["--stream", "--device", "cpu", *GROUP] if stream else [])
    run_fail(capsys, argv, str(path), *mentions, code=2)


@pytest.mark.parametrize("which,mentions", [("wide", ("257", "512")), ("other_eos", ("eos_token_id 5",)),
                                            ("narrow", ("257", "100"))])
@pytest.mark.parametrize("stream", [False, True])
def test_tokenizer_of_another_model_refused_by_sweep(capsys, tmp_path, request, which, mentions, stream):
    path = request.getfixturevalue(which)
    out = tmp_path / "r"
    cfg = _sweep_cfg(tmp_path, path, out, stream=stream, device="cpu")
    run_fail(capsys, ["sweep", cfg, "--quiet"], str(path), *mentions, code=2)
    assert _records(out) == []


def test_padded_embedding_and_shared_special_tokens_accepted(tok):
    """Padding rows (Pythia: 50277 tokens, 50304 rows) and a config eos that is another special token of the
    tokenizer (instruct models) are not mismatches."""
    from qrobust.checks import check_tokenizer, padded_rows
    assert padded_rows(50277) >= 50304 and padded_rows(50295) >= 51200 and padded_rows(100015) >= 102400
    assert padded_rows(257) < 512 and padded_rows(32000) < 50304
    check_tokenizer(384, {"eos_token_id": 0, "bos_token_id": 0}, tok, "m")
    check_tokenizer(len(tok), {"eos_token_id": [0, 7]}, tok, "m")  # a list holding the tokenizer's eos
    from qrobust.errors import CheckpointError
    with pytest.raises(CheckpointError, match="eos_token_id 7"):
        check_tokenizer(len(tok), {"eos_token_id": 7}, tok, "m")


def test_token_ids_beyond_embedding_never_index(narrow):
    """The last line of defence inside evaluation: no IndexError (a device assert on a GPU)."""
    from qrobust.errors import CheckpointError
    from qrobust.evaluate import evaluate_loss
    from qrobust.models import load_checkpoint
    with pytest.raises(CheckpointError, match="token id 200"):
        evaluate_loss(load_checkpoint(narrow), torch.full((1, 8), 200))
