"""Bit-exactness at scale: every float preset (and a few general spellings) against its owners' reference
(tests/format_oracles.py, the same oracles as tests/test_formats_oracle.py) on many tensors: random weights
of several shapes at magnitudes from 1e-30 to 1e3 (heavy tailed), the adversarial rows (zero blocks, a single
nonzero, ±0, exact ties, at / beyond the element max, huge beside tiny, subnormal elements), in fp32, bf16
and fp16. Counts tensors, values, value mismatches (equal values and equal sign bits; compressed-tensors
turns an input −0.0 into +0.0, which is not counted) and stored-scale mismatches per format.

Also counted, not required to agree (reported as found):
  * the OCP MX rule by hand (Python floats) on a sample of blocks per MX format (it must agree);
  * torchao's NVFP4 (per-tensor scale amax/2688): E4M3 scales and elements, and dequantized values, which
    differ in the last bits by design (torchao multiplies by (amax/2688)·s, compressed-tensors divides s
    by 2688/amax);
  * compressed-tensors' NVFP4 applied to a bf16 tensor as it is (it then computes the global scale and
    amax/6 in bf16), against our fp32 rule, which equals compressed-tensors and torchao on an fp32 copy.
Usage: python bench/check_formats_oracle.py [--values 2.1e7] [--json bench/results/formats_oracle_<date>.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the oracles live with the tests
import format_oracles as fo  # noqa: E402

GENERAL = ["fp4-e2m1-g32-fp16", "fp8-e4m3-g128", "fp6-e3m2-g32-e8m0", "fp8-e5m2-g64-fp16", "fp6-e2m3-channel"]
SHAPES = [(64, 512), (128, 256), (32, 1024), (96, 384), (16, 2048), (256, 128)]
DTYPES = [torch.float32, torch.float32, torch.bfloat16, torch.float16]


def tensors(fmt, budget: int, seed0: int):
    """Yield (tensor, kind) until ``budget`` values: every 5th an adversarial block of rows, the others
    random weights at a log-uniform magnitude (FP16 scales: below their overflow), in rotating dtypes."""
    gen = torch.Generator().manual_seed(seed0)
    top = 4.0 if fmt.scale != "fp16" else 1.5 + (fmt.elem.max > 100) * 2  # log10 of the largest magnitude
    n = i = 0
    while n < budget:
        rows, cols = SHAPES[i % len(SHAPES)]
        if fmt.block_size > 0 and cols % fmt.block_size:
            cols = 512
        dt = DTYPES[i % len(DTYPES)]
        if i % 5 == 4:
            w = fo.adversarial(fmt.element, fmt.block_size, cols, seed=seed0 + i).repeat(4, 1)
            kind = "adversarial"
        else:  # fp16 tensors: magnitudes fp16 holds (1e-3 … 1e3), not all zero or inf
            lo, hi = (-3.0, min(top, 3.0)) if dt == torch.float16 else (-30.0, top)
            mag = 10 ** float(torch.empty(1).uniform_(lo, hi, generator=gen))
            w = fo.random_weights(rows, cols, mag, seed0 + i)
            kind = "random"
        if bool(torch.isfinite(w.to(dt)).all()):  # else an adversarial value beyond fp16: kept fp32
            w = w.to(dt)
        i += 1
        n += w.numel()
        yield w, kind


def compare(fmt, name: str, budget: int, seed0: int) -> dict:
    from qrobust.quant.formats.grid import fake_quantize_format
    keeps_neg_zero = fmt.scale != "e4m3" and name != "fp8-e4m3-channel"  # compressed-tensors' oracles don't
    c = {"tensors": 0, "values": 0, "value_mismatches": 0, "sign_mismatches": 0, "scales": 0, "scale_mismatches": 0,
         "tensors_with_mismatch": 0, "by_dtype": {}}
    for w, _ in tensors(fmt, budget, seed0):
        ref = fo.oracle(w, fmt.element, fmt.block_size, fmt.scale)
        ours, grid = fake_quantize_format(w, fmt)
        v = ref["values"]
        bad = int((ours != v).sum())
        signs = torch.signbit(ours) != torch.signbit(v)
        if not keeps_neg_zero:
            signs &= ~((w == 0) & torch.signbit(w))
        if "e8m0" in ref:
            sbad = int((((grid.scale.view(torch.int32) >> 23) & 0xFF).to(torch.uint8) != ref["e8m0"]).sum())
            sbad += int((grid.scale != torch.exp2(ref["e8m0"].double() - 127).float()).sum())
        else:
            sbad = int((grid.scale != ref["scale"]).sum())
        if "global" in ref:
            sbad += int(not torch.equal(grid.tensor_scale, ref["global"]))
        c["tensors"] += 1
        c["values"] += w.numel()
        c["value_mismatches"] += bad
        c["sign_mismatches"] += int(signs.sum())
        c["scales"] += grid.scale.numel()
        c["scale_mismatches"] += sbad
        c["tensors_with_mismatch"] += int(bad + sbad + int(signs.sum()) > 0)
        d = c["by_dtype"].setdefault(str(w.dtype).replace("torch.", ""), {"tensors": 0, "values": 0})
        d["tensors"] += 1
        d["values"] += w.numel()
    return c


def by_hand(fmt, n_blocks: int, seed: int) -> dict:
    """The OCP rule in Python floats on ``n_blocks`` blocks of 32 (random magnitudes and adversarial rows)."""
    from qrobust.quant.formats.grid import fake_quantize_format
    rows = []
    gen = torch.Generator().manual_seed(seed)
    while sum(r.shape[0] for r in rows) < n_blocks:
        mag = 10 ** float(torch.empty(1).uniform_(-38, 4, generator=gen))
        rows += [fo.random_weights(8, 32, mag, seed + len(rows)), fo.adversarial(fmt.element, 32, 32, seed + len(rows))]
    w = torch.cat(rows)[:n_blocks]
    ours, grid = fake_quantize_format(w, fmt)
    bad = 0
    for r in range(w.shape[0]):
        vals, biased = fo.mx_by_hand(w[r].tolist(), fmt.element)
        bad += int(ours[r].tolist() != vals or grid.scale[r, 0].item() != 2.0 ** (biased - 127))
    return {"blocks": n_blocks, "values": w.numel(), "block_mismatches": bad}


def nvfp4_extra(budget: int, seed0: int) -> dict:
    """torchao's NVFP4 beside ours (fp32), and compressed-tensors on bf16 tensors as they are."""
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam
    from qrobust.quant.formats.grid import fake_quantize_format
    from qrobust.quant.formats.presets import FORMATS
    fmt = FORMATS["nvfp4"]
    args = QuantizationArgs(num_bits=4, type="float", strategy="tensor_group", symmetric=True, group_size=16,
                            scale_dtype=torch.float8_e4m3fn)
    ta = {"tensors": 0, "values": 0, "blocks": 0, "scale_mismatches": 0, "element_mismatches_same_scale": 0,
          "value_mismatches_same_scale": 0, "max_ulps_same_scale_and_element": 0}
    bf = {"tensors": 0, "values": 0, "value_mismatches": 0, "blocks": 0, "scale_mismatches": 0,
          "global_scale_mismatches": 0}
    for w, kind in tensors(fmt, budget, seed0):
        if kind != "random":
            continue
        w32 = w.float()
        ours, grid = fake_quantize_format(w32, fmt)
        ref, scale, elems = fo.nvfp4_torchao(w32)
        same = (grid.scale == scale)[:, grid.g_idx]  # per value: its block got the same E4M3 scale
        codes = fmt.codes(w32, grid.scale[:, grid.g_idx], grid.zero[:, grid.g_idx], grid.tensor_scale)
        ulps = (ours.view(torch.int32) - ref.view(torch.int32)).abs()
        agree = same & (codes == elems)
        ta["tensors"] += 1
        ta["values"] += w.numel()
        ta["blocks"] += scale.numel()
        ta["scale_mismatches"] += int((grid.scale != scale).sum())
        ta["element_mismatches_same_scale"] += int(((codes != elems) & same).sum())
        ta["value_mismatches_same_scale"] += int(((ulps > 0) & same).sum())
        ta["max_ulps_same_scale_and_element"] = max(ta["max_ulps_same_scale_and_element"], int(ulps[agree].max()))
        wb = w.bfloat16()
        gs = generate_gparam(wb.amin(), wb.amax())
        g = wb.unflatten(1, (-1, 16))
        s, zp = calculate_qparams(g.amin(-1), g.amax(-1), args, global_scale=gs)
        ct = fake_quantize(wb, s, zp, args, global_scale=gs)
        ours_b, grid_b = fake_quantize_format(wb, fmt)
        bf["tensors"] += 1
        bf["values"] += w.numel()
        bf["value_mismatches"] += int((ct != ours_b).sum())
        bf["blocks"] += s.numel()
        bf["scale_mismatches"] += int((s.float() != grid_b.scale).sum())
        bf["global_scale_mismatches"] += int(not torch.equal(gs.float(), grid_b.tensor_scale))
    return {"torchao_fp32": ta, "compressed_tensors_on_bf16_as_is": bf}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--values", type=float, default=2.1e7, help="values per format (at least)")
    ap.add_argument("--hand-blocks", type=int, default=5000, help="blocks per MX format checked by hand")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    logging.getLogger("torchao").setLevel(logging.ERROR)
    from qrobust.quant.formats.presets import FORMATS, parse_format
    names = sorted(n for n, f in FORMATS.items() if not f.is_int and f.block_size not in (0, -2)) + GENERAL
    out: dict = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "formats": {}}
    import compressed_tensors
    import torchao
    out["torchao"], out["compressed_tensors"] = torchao.__version__, compressed_tensors.__version__
    t_all = time.perf_counter()
    for k, name in enumerate(names):
        fmt = parse_format(name)
        t0 = time.perf_counter()
        r = compare(fmt, name, int(a.values), 1000 * k)
        if fmt.scale == "e8m0":
            r["ocp_by_hand"] = by_hand(fmt, a.hand_blocks, 1000 * k)
        r["seconds"] = time.perf_counter() - t0
        out["formats"][name] = r
        hand = r.get("ocp_by_hand")
        print(f"{name:>20}: {r['tensors']:4d} tensors {r['values']:>9,d} values  mismatches: values "
              f"{r['value_mismatches']} signs {r['sign_mismatches']} scales {r['scale_mismatches']}/{r['scales']:,d}"
              + (f"  by hand: {hand['block_mismatches']}/{hand['blocks']} blocks" if hand else "")
              + f"  ({r['seconds']:.0f} s)", flush=True)
    out["nvfp4_other_references"] = x = nvfp4_extra(int(a.values) // 4, 77)
    print("nvfp4 vs torchao (fp32):", x["torchao_fp32"])
    print("nvfp4 vs compressed-tensors on bf16 as is:", x["compressed_tensors_on_bf16_as_is"])
    out["seconds"] = time.perf_counter() - t_all
    out["all_exact"] = all(r["value_mismatches"] == r["sign_mismatches"] == r["scale_mismatches"] == 0
                           and r.get("ocp_by_hand", {}).get("block_mismatches", 0) == 0
                           for r in out["formats"].values())
    print(f"all exact: {out['all_exact']}  ({out['seconds']:.0f} s)")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
