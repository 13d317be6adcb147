"""Benchmark: GPTQ end to end on the issue's shape, against its arithmetic floor and llm-compressor.

Shape: Llama, 4 layers, hidden 512, intermediate 1280, vocab 4096, W4 g128, 128 x 512 calibration tokens,
random init (seed 0), 2 threads. Prints medians over ``--repeats`` measured in one run.

Floor: the flops that block-sequential GPTQ cannot avoid — the Hessians (2·N·d² per input group), the
GPTQ updates (~2·out·in² per linear) and one forward of every block but the last over the calibration
set (the next block's inputs) — divided by the best fp32 matmul rate measured in this run (square 2048 and
the model's own linear shapes, before and after the GPTQ runs).

If ``llmcompressor`` imports (``make bench-llmcompressor`` builds a separate venv with it: it pins its
own transformers), the same model and calibration tokens go through its ``oneshot`` GPTQ (W4A16,
its defaults), and through our ``llmcompressor`` profile; both times, both ΔQ L and the per-block
agreement of the quantized weights are printed.
Usage: python bench/bench_gptq.py [--repeats 3] [--threads 2] [--profile gptqmodel] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time

import torch

VOCAB, HIDDEN, INTER, LAYERS, HEADS = 4096, 512, 1280, 4, 8
N_CALIB, T_CALIB = 128, 512


def build(seed: int = 0, vocab: int = VOCAB):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=T_CALIB,
                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def flop_floor(n_tokens: int, seq_len: int) -> dict[str, float]:
    """Tera-flops of the unavoidable work (see module docstring); attention counted as two T×T matmuls."""
    groups = [HIDDEN, HIDDEN, HIDDEN, INTER]  # input widths of (q,k,v), o, (gate,up), down
    hess = LAYERS * sum(2 * n_tokens * d * d for d in groups)
    linears = [(HIDDEN, HIDDEN)] * 4 + [(HIDDEN, INTER)] * 2 + [(INTER, HIDDEN)]  # (in, out)
    upd = LAYERS * sum(2 * o * i * i for i, o in linears)
    block_fwd = sum(2 * n_tokens * i * o for i, o in linears) + 2 * 2 * n_tokens * seq_len * HIDDEN
    return {"hessian_tflop": hess / 1e12, "update_tflop": upd / 1e12,
            "forward_tflop": (LAYERS - 1) * block_fwd / 1e12}


def matmul_gflops() -> dict[str, float]:
    """fp32 matmul rates (GFLOP/s, median of 5): square 2048, and the model's own linear shapes over 8
    sequences of 512 tokens (x @ Wᵀ as nn.Linear runs it)."""
    def rate(a, b):
        a @ b
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            a @ b
            ts.append(time.perf_counter() - t0)
        return 2 * a.shape[0] * a.shape[1] * b.shape[1] / statistics.median(ts) / 1e9
    shapes = {"linear_4096x512x512": (HIDDEN, HIDDEN), "linear_4096x512x1280": (HIDDEN, INTER),
              "linear_4096x1280x512": (INTER, HIDDEN)}
    out = {"square_2048": rate(torch.randn(2048, 2048), torch.randn(2048, 2048))}
    for name, (i, o) in shapes.items():
        out[name] = rate(torch.randn(4096, i), torch.randn(o, i).T)
    return out


def run_ours(model, calib, evalb, fp: float, profile: str, repeats: int) -> dict:
    from qrobust.evaluate import evaluate_loss
    from qrobust.quant import QuantSpec, quantized, select_linears
    spec = QuantSpec(method="gptq", bits=4, group_size=128, sym=True, options=(("profile", profile),))
    times, dq, layer_s, weights, calib_s = [], None, None, None, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        with quantized(model, spec, calib) as res:
            times.append(time.perf_counter() - t0)
            dq = evaluate_loss(model, evalb).loss / fp - 1
            layer_s = sum(v["seconds"] for v in res.layers.values())
            calib_s = res.calibration_seconds
            weights = {n: m.weight.detach().clone() for n, m in select_linears(model).items()}
    return {"wall_s_median": statistics.median(times), "wall_s_all": times, "dq_rel": dq,
            "gptq_core_s": layer_s, "calibration_s": calib_s, "weights": weights}


def run_llmcompressor(calib, evalb, fp: float) -> dict:
    """llm-compressor's oneshot GPTQ (W4A16 = 4 bit, group 128, symmetric; its defaults otherwise)."""
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier
    from tokenizers import Tokenizer, models
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from qrobust.evaluate import evaluate_loss
    with tempfile.TemporaryDirectory() as d:
        build().save_pretrained(d)  # oneshot wants a model with a config path and a processor
        model = LlamaForCausalLM.from_pretrained(d).eval()
        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"t0": 0}, unk_token="t0")),
                                      unk_token="t0", pad_token="t0")
        ds = Dataset.from_dict({"input_ids": calib.tolist(), "attention_mask": torch.ones_like(calib).tolist()})
        t0 = time.perf_counter()
        oneshot(model=model, processor=tok, dataset=ds, num_calibration_samples=len(calib),
                max_seq_length=calib.shape[1], shuffle_calibration_samples=False,
                recipe=GPTQModifier(scheme="W4A16", targets="Linear", ignore=["lm_head"]))
        wall = time.perf_counter() - t0
        dq = evaluate_loss(model, evalb).loss / fp - 1
        mods = dict(model.named_modules())
        weights = {n: mods[n].weight.detach().clone() for n in mods if n.endswith("_proj")}
    return {"wall_s": wall, "dq_rel": dq, "weights": weights}


def agreement(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per block: fraction of quantized weights that are bit-identical in both."""
    out: dict[str, list[float]] = {}
    for n, w in a.items():
        if n in b:
            blk = n.split(".layers.")[1].split(".")[0]
            out.setdefault(blk, []).append(float((w == b[n]).float().mean()))
    return {f"block{k}": min(v) for k, v in sorted(out.items())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", default="gptqmodel")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from qrobust.evaluate import evaluate_loss

    model = build()
    rates_before = matmul_gflops()  # the floor takes the best rate measured before or after the runs
    g = torch.Generator().manual_seed(0)
    calib = torch.randint(0, VOCAB, (N_CALIB, T_CALIB), generator=g)
    evalb = torch.randint(0, VOCAB, (16, T_CALIB), generator=g)
    fp = evaluate_loss(model, evalb).loss
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ours = run_ours(model, calib, evalb, fp, a.profile, a.repeats)
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    floor = flop_floor(calib.numel(), T_CALIB)
    rates = {"before": rates_before, "after": matmul_gflops()}
    best = max(r for phase in rates.values() for r in phase.values())
    floor_s = sum(floor.values()) * 1e3 / best
    out = {"profile": a.profile, "threads": a.threads, "gptq_wall_s_median": ours["wall_s_median"],
           "gptq_wall_s_all": ours["wall_s_all"], "gptq_core_s": ours["gptq_core_s"],
           "calibration_forwards_s": ours["calibration_s"], **floor,
           "matmul_gflops": rates, "floor_s": floor_s, "ratio_to_floor": ours["wall_s_median"] / floor_s,
           "dq_rel_w4g128": ours["dq_rel"],
           # memory: peak RSS growth during GPTQ vs one hidden-state tensor of the calibration set
           "peak_rss_growth_mb": rss_peak - rss_before,
           "one_block_hidden_states_mb": N_CALIB * T_CALIB * HIDDEN * 4 / 2 ** 20}
    try:
        import llmcompressor  # noqa: F401
    except ImportError:
        out["llmcompressor"] = "not installed (make bench-llmcompressor runs this with it)"
    else:
        theirs = run_llmcompressor(calib, evalb, fp)
        same = run_ours(model, calib, evalb, fp, "llmcompressor", 1)
        out["llmcompressor"] = {"version": llmcompressor.__version__, "wall_s": theirs["wall_s"],
                                "dq_rel": theirs["dq_rel"], "ours_llmcompressor_profile_wall_s": same["wall_s_median"],
                                "ours_llmcompressor_profile_dq_rel": same["dq_rel"],
                                "bit_identical_fraction_min_per_block": agreement(same["weights"], theirs["weights"])}
    report(out, a.json)


def report(out: dict, path: str | None, width: int = 28) -> None:
    """Print the results one per line, and write them as JSON to ``path`` when given."""
    for k, v in out.items():
        print(f"{k:{width}s} {v}")
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
