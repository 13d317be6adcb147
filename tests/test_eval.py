"""Loss evaluation against a slow prefix-by-prefix reference and a closed form."""
from __future__ import annotations

import math

import pytest
import torch

from qrobust.evaluate import degradation, evaluate_loss
from qrobust.models import build_model


@pytest.fixture(scope="module")
def model():
    m = build_model("gpt_neox", "micro", vocab_size=50, max_positions=32, seed=3)
    return m


def _slow_reference(model, blocks) -> float:
    """Each target predicted from its own prefix only, one forward pass per target, float64 log-softmax."""
    total, n = 0.0, 0
    with torch.no_grad():
        for b in blocks:
            for t in range(1, b.numel()):
                logits = model(input_ids=b[:t].unsqueeze(0)).logits[0, -1].double()
                total -= torch.log_softmax(logits, -1)[b[t]].item()
                n += 1
    return total / n


def test_matches_slow_reference_for_any_batch_size(model):
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 50, (3, 12), generator=g)
    ref = _slow_reference(model, blocks)
    for bs in (1, 2, 8):
        r = evaluate_loss(model, blocks, batch_size=bs)
        assert r.loss == pytest.approx(ref, rel=1e-5)
        assert r.n_tokens == 3 * 11
        assert math.fsum(r.block_sums) / r.n_tokens == pytest.approx(r.loss)


def test_uniform_logits_give_log_vocab(model):
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()
    blocks = torch.randint(0, 50, (2, 9))
    r = evaluate_loss(model, blocks)
    assert r.loss == pytest.approx(math.log(50), abs=1e-6)
    assert r.ppl == pytest.approx(50, rel=1e-5)


def test_degradation_by_hand():
    d = degradation(2.0, 2.5)
    assert d["dq_rel"] == pytest.approx(0.25)
    assert d["dq_abs"] == pytest.approx(0.5)
    assert d["ppl_fp"] == pytest.approx(math.exp(2.0))
    assert d["ppl_q"] == pytest.approx(math.exp(2.5))


def test_rejects_bad_block_shape(model):
    with pytest.raises(ValueError):
        evaluate_loss(model, torch.zeros(5, dtype=torch.long))
