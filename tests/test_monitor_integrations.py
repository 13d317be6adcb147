"""The monitor in HF's Trainer and in Lightning: training unchanged bit for bit, evaluations at the due steps on
the current weights, the step log (monitor lines + the LR of every step), rank-zero only, resume, refusals.

Most tests use ``StandIn``, a monitor with the :class:`qrobust.monitor.Monitor` interface that computes the FP
loss of the weights it is handed (and deliberately draws from the RNG and flips the mode, restoring both, as the
contract requires); ``test_*_real_monitor`` and the example tests run qrobust's own Monitor and skip until it
exists."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from qrobust.errors import ConfigError, QrobustError

pytest.importorskip("accelerate")
EXAMPLES = Path(__file__).parents[1] / "examples"
SEQ, EVERY, STEPS, LR = 32, 2, 6, 3e-3


def has_real_monitor() -> bool:
    import qrobust.monitor as m
    return hasattr(m, "Monitor") or importlib.util.find_spec("qrobust.monitor.core") is not None


needs_monitor = pytest.mark.skipif(not has_real_monitor(), reason="needs qrobust.monitor.Monitor (monitor core)")
needs_lightning = pytest.mark.skipif(importlib.util.find_spec("lightning") is None,
                                     reason="needs lightning: pip install 'qrobust[monitor]'")


def fp_loss(model: torch.nn.Module, blocks: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model(input_ids=blocks, labels=blocks).loss)


class StandIn:
    """The Monitor interface: FP loss of the current weights on fixed blocks, a 'quantized' loss 10 % above it."""

    def __init__(self, blocks: torch.Tensor, every: int = EVERY, refuse: str | None = None) -> None:
        self.blocks, self.every, self.refuse = blocks, every, refuse
        self.history: list[SimpleNamespace] = []
        self.checked: list[str] = []
        self.restored: list[dict] | None = None

    def check(self, model) -> None:
        self.checked.append(type(model).__name__)
        if self.refuse:
            raise QrobustError(self.refuse)

    def due(self, step: int) -> bool:
        return step > 0 and step % self.every == 0

    def evaluate(self, model, step: int) -> SimpleNamespace:
        rng, mode = torch.get_rng_state(), model.training
        torch.rand(5)  # drawn and then restored: the trajectory must not see it
        model.eval()
        loss = fp_loss(model, self.blocks)
        model.train(mode)
        torch.set_rng_state(rng)
        m = {"monitor/loss_fp": loss, "monitor/loss_q/rtn-w3g16": 1.1 * loss, "monitor/dq/rtn-w3g16": 0.1,
             "monitor/dq_low/rtn-w3g16": 0.08, "monitor/dq_high/rtn-w3g16": 0.12, "monitor/seconds": 0.01}
        alerts = ["dq/rtn-w3g16"] if step == 2 * self.every else []
        if alerts:
            m["monitor/alert/dq/rtn-w3g16"] = 0.125
        res = SimpleNamespace(step=step, metrics=m, alerts=alerts, seconds=0.01)
        self.history.append(res)
        return res

    def restore(self, lines: list[dict]) -> None:
        self.restored = lines
        self.history = [SimpleNamespace(step=ln["step"], metrics=ln, alerts=[], seconds=0.0) for ln in lines]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Micro models train fastest on one thread (and the examples set one): restored for the other modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def blocks():
    """(tokenizer vocab size, training blocks, 4 held-out blocks) of the built-in corpus."""
    from qrobust.config import DataConfig
    from qrobust.data import pack_blocks
    from qrobust.data.prepare import prepare_data
    d = prepare_data(DataConfig(max_chars=200_000, seq_len=SEQ, vocab_size=300))
    return len(d.tokenizer), pack_blocks(d.train, SEQ)[:64], pack_blocks(d.val, SEQ)[:4]


def micro(vocab: int, arch: str = "gpt_neox"):
    from qrobust.models import build_model
    return build_model(arch, "micro", vocab_size=vocab, max_positions=SEQ, seed=0)


def read_log(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


# ---------------------------------------------------------------- HF Trainer

class Examples(torch.utils.data.Dataset):
    def __init__(self, b: torch.Tensor) -> None:
        self.b = b

    def __len__(self) -> int:
        return self.b.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.b[i], "labels": self.b[i]}


def hf_train(out: Path, blocks, callback=None, arch: str = "gpt_neox", steps: int = STEPS, **over):
    from transformers import Trainer, TrainingArguments
    vocab, train, _ = blocks
    kw = dict(output_dir=str(out), max_steps=steps, per_device_train_batch_size=4, learning_rate=LR,
              lr_scheduler_type="linear", use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
              disable_tqdm=True, seed=0, dataloader_num_workers=0)
    kw.update(over)
    model = micro(vocab, arch)
    trainer = Trainer(model=model, args=TrainingArguments(**kw), train_dataset=Examples(train),
                      callbacks=[callback] if callback else [])
    return trainer, model


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_hf_trainer_weights_bit_identical_and_log(tmp_path, blocks, arch, capsys):
    from qrobust.integrations import QrobustTrainerCallback
    t0, m0 = hf_train(tmp_path / "a", blocks, arch=arch)
    t0.train()
    mon = StandIn(blocks[2])
    t1, m1 = hf_train(tmp_path / "b", blocks, QrobustTrainerCallback(mon), arch=arch)
    t1.train()
    s0, s1 = m0.state_dict(), m1.state_dict()
    assert all(torch.equal(s0[k], s1[k]) for k in s0)
    assert mon.checked == [type(m1).__name__] and [r.step for r in mon.history] == [2, 4, 6]
    lines = read_log(tmp_path / "b" / "logs" / "monitor.jsonl")
    # HF's linear schedule without warmup: step s (1-based) is taken with lr0 * (1 - (s-1)/steps)
    lrs = [(ln["step"], ln["lr"]) for ln in lines if "lr" in ln]
    assert lrs == [(s, pytest.approx(LR * (1 - (s - 1) / STEPS), rel=1e-12)) for s in range(1, STEPS + 1)]
    mon_lines = [ln for ln in lines if "monitor/loss_fp" in ln]
    assert [ln["step"] for ln in mon_lines] == [2, 4, 6]
    # the last evaluation saw the final weights: its FP loss is the trained model's, computed here
    m1.eval()
    assert mon_lines[-1]["monitor/loss_fp"] == pytest.approx(fp_loss(m1, blocks[2]), rel=1e-6)
    hist = [e for e in t1.state.log_history if "monitor/loss_fp" in e]
    assert [(e["step"], e["epoch"]) for e in hist] == [(s, pytest.approx(s * 4 / 64)) for s in (2, 4, 6)]
    out = capsys.readouterr().out
    assert "monitor step 4: loss_fp" in out and "rtn-w3g16 ΔQ L +10.00% [+8.00, +12.00]" in out
    assert "monitor ALERT at step 4: dq/rtn-w3g16 rose by 12.5%\n" in out


def test_hf_trainer_refusal_stops_before_a_step(tmp_path, blocks):
    from qrobust.integrations import QrobustTrainerCallback
    mon = StandIn(blocks[2], refuse="bits 3 with group 128 do not fit layer 'x' (32 inputs)")
    t, m = hf_train(tmp_path, blocks, QrobustTrainerCallback(mon))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(QrobustError, match="do not fit layer"):
        t.train()
    assert t.state.global_step == 0 and all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_hf_trainer_resume_restores_history_and_cuts_the_log(tmp_path, blocks):
    """A run saved at step 4, killed after 6, resumed from checkpoint-4: the log and history equal one run's."""
    from qrobust.integrations import QrobustTrainerCallback
    whole = StandIn(blocks[2])
    hf_train(tmp_path / "whole", blocks, QrobustTrainerCallback(whole, verbose=False), steps=8)[0].train()
    first = StandIn(blocks[2])
    t, _ = hf_train(tmp_path / "r", blocks, QrobustTrainerCallback(first, verbose=False), steps=8,
                    save_strategy="steps", save_steps=4)
    t.train()
    (tmp_path / "r" / "checkpoint-8").rename(tmp_path / "r" / "gone")  # the attempt "died" after step 8's log
    again = StandIn(blocks[2])
    t2, m2 = hf_train(tmp_path / "r", blocks, QrobustTrainerCallback(again, verbose=False), steps=8,
                      save_strategy="steps", save_steps=4)
    t2.train(resume_from_checkpoint=str(tmp_path / "r" / "checkpoint-4"))
    assert [ln["step"] for ln in again.restored] == [2, 4] and [r.step for r in again.history] == [2, 4, 6, 8]
    a, b = read_log(tmp_path / "whole" / "logs" / "monitor.jsonl"), read_log(tmp_path / "r" / "logs" / "monitor.jsonl")
    assert [ln["step"] for ln in b] == [ln["step"] for ln in a]
    assert [ln.get("lr") for ln in b] == [ln.get("lr") for ln in a]


def test_hf_callback_evaluates_on_the_main_process_only(tmp_path, blocks):
    from qrobust.integrations import QrobustTrainerCallback
    mon = StandIn(blocks[2])
    cb = QrobustTrainerCallback(mon, log_dir=tmp_path / "logs")
    args = SimpleNamespace(output_dir=str(tmp_path / "unused"))
    state = SimpleNamespace(is_world_process_zero=False, global_step=0, epoch=0.0, log_history=[])
    model = micro(blocks[0])
    cb.on_train_begin(args, state, None, model=model)  # every rank checks: a refusal stops them all
    state.global_step = 2
    cb.on_step_end(args, state, None, model=model)
    cb.on_train_end(args, state, None)
    assert mon.checked == ["GPTNeoXForCausalLM"] and mon.history == [] and state.log_history == []
    assert not (tmp_path / "logs").exists() and not (tmp_path / "unused").exists()


def test_sink_writes_the_step_log_and_tensorboard_under_the_folder(tmp_path):
    from qrobust.integrations.sinks import monitor_lines, open_sink
    pytest.importorskip("tensorboard")
    folder = tmp_path / "logs"
    with open_sink(folder, ["jsonl", "tensorboard"], resume_step=0) as sink:
        for s in (1, 2, 3):
            sink.log(s, {"lr": 0.1 * s})
            sink.log(s, {"monitor/loss_fp": float(s), "monitor/missing": None})
    assert read_log(folder / "monitor.jsonl")[-1] == {"step": 3, "monitor/loss_fp": 3.0}
    assert list((folder / "tensorboard" / "monitor").glob("events.out.tfevents.*"))
    assert monitor_lines(folder / "monitor.jsonl", 2) == [{"step": 1, "monitor/loss_fp": 1.0},
                                                         {"step": 2, "monitor/loss_fp": 2.0}]
    with open_sink(folder, ["jsonl"], resume_step=2):  # a resume from step 2 drops what was logged after it
        pass
    assert [ln["step"] for ln in read_log(folder / "monitor.jsonl")] == [1, 1, 2, 2]
    with pytest.raises(ConfigError, match="unknown tracker 'mlflow'"):
        open_sink(folder, ["mlflow"], resume_step=0)


def test_sharded_weights_are_refused_before_a_step(tmp_path, blocks):
    from qrobust.integrations import QrobustTrainerCallback
    from qrobust.integrations.hf_trainer import check_unsharded
    mon = StandIn(blocks[2])
    state = SimpleNamespace(is_world_process_zero=True, global_step=0, epoch=0.0, log_history=[])
    with pytest.raises(ConfigError, match="holds only a shard of the weights under the HF Trainer's FSDP"):
        QrobustTrainerCallback(mon).on_train_begin(SimpleNamespace(fsdp="full_shard", output_dir=str(tmp_path)),
                                                   state, None, model=micro(blocks[0]))
    assert mon.checked == [] and not (tmp_path / "logs").exists()
    check_unsharded(SimpleNamespace(fsdp=None))  # DDP or one process: fine
    if importlib.util.find_spec("lightning") is not None:
        from qrobust.integrations.lightning_callback import check_unsharded as pl_check

        class FSDPStrategy:
            pass

        with pytest.raises(ConfigError, match="under Lightning's FSDPStrategy"):
            pl_check(FSDPStrategy())
        with pytest.raises(ConfigError, match=r"DeepSpeedStrategy \(ZeRO stage 3\)"):
            pl_check(type("DeepSpeedStrategy", (), {"zero_stage_3": True})())
        pl_check(type("DDPStrategy", (), {})())


def test_callbacks_refuse_an_object_that_is_not_a_monitor():
    from qrobust.integrations import QrobustTrainerCallback
    classes = [QrobustTrainerCallback]
    if importlib.util.find_spec("lightning") is not None:
        from qrobust.integrations import QrobustLightningCallback
        classes.append(QrobustLightningCallback)
    for cls in classes:
        with pytest.raises(ConfigError, match="without check, due, evaluate, restore"):
            cls({"every": 10})


def test_text_blocks_and_summary_line(blocks):
    from qrobust.data.prepare import prepare_data
    from qrobust.config import DataConfig
    from qrobust.integrations import summary_line, text_blocks
    from qrobust.integrations.sinks import alert_line
    tok = prepare_data(DataConfig(max_chars=200_000, seq_len=SEQ, vocab_size=300)).tokenizer
    texts = ["alpha beta gamma " * 20, "delta epsilon " * 30]
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    stream = ids[0] + [tok.eos_token_id] + ids[1] + [tok.eos_token_id]
    got = text_blocks(tok, texts, 8, 3)
    assert got.tolist() == [stream[0:8], stream[8:16], stream[16:24]]
    with pytest.raises(QrobustError, match=f"gives? {len(stream) // 8} blocks of 8 tokens, fewer than the 999"):
        text_blocks(tok, texts, 8, 999)
    line = summary_line(7, {"monitor/loss_fp": 2.5, "monitor/dq/gptq-w4g128": -0.00125, "monitor/seconds": 1.5})
    assert line == "monitor step 7: loss_fp 2.5000 | gptq-w4g128 ΔQ L -0.12% | 1.50 s"
    assert alert_line(9, "dq/rtn-w3g128", {"monitor/alert/dq/rtn-w3g128": 0.0625}) == \
        "monitor ALERT at step 9: dq/rtn-w3g128 rose by 6.2%"
    assert alert_line(9, "loss_fp", {}) == "monitor ALERT at step 9: loss_fp"


# ---------------------------------------------------------------- Lightning

def pl_fit(out: Path, blocks, callback=None, steps: int = STEPS, accumulate: int = 1):
    import lightning.pytorch as pl
    vocab, train, _ = blocks
    pl.seed_everything(0, verbose=False)
    model = micro(vocab)

    class Wrapped(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model.train()

        def training_step(self, batch, batch_idx):
            return self.model(input_ids=batch, labels=batch).loss

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.model.parameters(), lr=LR)
            sch = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 / (1 + i))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sch, "interval": "step"}}

    loader = torch.utils.data.DataLoader(train, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    trainer = pl.Trainer(accelerator="cpu", deterministic=True, max_steps=steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(out), accumulate_grad_batches=accumulate,
                         callbacks=[callback] if callback else [])
    trainer.fit(Wrapped(), loader)
    return trainer, model


@needs_lightning
@pytest.mark.parametrize("accumulate", [1, 2])
def test_lightning_weights_bit_identical_and_log(tmp_path, blocks, accumulate):
    from qrobust.integrations import QrobustLightningCallback
    _, m0 = pl_fit(tmp_path / "a", blocks, accumulate=accumulate)
    mon = StandIn(blocks[2])
    t1, m1 = pl_fit(tmp_path / "b", blocks, QrobustLightningCallback(mon, verbose=False), accumulate=accumulate)
    s0, s1 = m0.state_dict(), m1.state_dict()
    assert all(torch.equal(s0[k], s1[k]) for k in s0)
    assert mon.checked == ["GPTNeoXForCausalLM"] and [r.step for r in mon.history] == [2, 4, 6]
    lines = read_log(tmp_path / "b" / "logs" / "monitor.jsonl")
    # LambdaLR 1/(1+i): step s is taken with lr0 / s
    assert [(ln["step"], ln["lr"]) for ln in lines if "lr" in ln] == [
        (s, pytest.approx(LR / s, rel=1e-12)) for s in range(1, STEPS + 1)]
    final = [ln for ln in lines if "monitor/loss_fp" in ln][-1]
    m1.eval()
    assert final["step"] == 6 and final["monitor/loss_fp"] == pytest.approx(fp_loss(m1, blocks[2]), rel=1e-6)
    assert float(t1.callback_metrics["monitor/loss_fp"]) == pytest.approx(final["monitor/loss_fp"], rel=1e-6)


@needs_lightning
def test_lightning_model_attr_and_missing_model(tmp_path, blocks):
    from qrobust.integrations.lightning_callback import inner_model
    hf = micro(blocks[0])
    assert inner_model(hf, None) is hf  # an HF model (has .config) is monitored itself
    holder = SimpleNamespace(model=hf, backbone=hf)
    assert inner_model(holder, None) is hf and inner_model(holder, "backbone") is hf
    with pytest.raises(ConfigError, match="has no attribute 'net' holding the model"):
        inner_model(holder, "net")


# ---------------------------------------------------------------- examples and the real monitor

def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", ["monitor_hf_trainer", pytest.param("monitor_lightning", marks=needs_lightning)])
def test_examples_run_with_a_stand_in(tmp_path, name, capsys):
    ex = load_example(name)
    made = []

    def make(cfg, eval_blocks):
        made.append((cfg, eval_blocks.shape))
        return StandIn(eval_blocks, every=cfg["every"])

    ex.main(["--out", str(tmp_path), "--steps", "20"], make=make)
    assert made == [(ex.MONITOR, (16, 64))]
    out = capsys.readouterr().out
    assert "monitor step 20: loss_fp" in out
    lines = read_log(tmp_path / "logs" / "monitor.jsonl")
    assert [ln["step"] for ln in lines if "monitor/loss_fp" in ln] == [20]
    assert math.isfinite(lines[-1]["monitor/loss_fp"])


@needs_monitor
@pytest.mark.parametrize("name", ["monitor_hf_trainer", pytest.param("monitor_lightning", marks=needs_lightning)])
def test_examples_run_with_the_real_monitor(tmp_path, name, capsys):
    ex = load_example(name)
    ex.main(["--out", str(tmp_path), "--steps", "40"])
    lines = [ln for ln in read_log(tmp_path / "logs" / "monitor.jsonl") if "monitor/loss_fp" in ln]
    assert [ln["step"] for ln in lines] == [20, 40]
    for ln in lines:
        for b in (3, 4):
            key = f"rtn-w{b}g32"
            q, fp = ln[f"monitor/loss_q/{key}"], ln["monitor/loss_fp"]
            assert ln[f"monitor/dq/{key}"] == pytest.approx(q / fp - 1, rel=1e-6)
            assert ln[f"monitor/dq_low/{key}"] <= ln[f"monitor/dq/{key}"] <= ln[f"monitor/dq_high/{key}"]
    assert "monitor step 40: loss_fp" in capsys.readouterr().out


@needs_monitor
def test_make_monitor_refuses_a_bad_config_in_one_line(blocks):
    from qrobust.integrations import make_monitor
    with pytest.raises(ConfigError, match="monitor config") as e:
        make_monitor({"every": 0}, blocks[2])
    assert "every" in str(e.value) and "\n" not in str(e.value)
    mon = make_monitor({"every": 2, "bits": [3], "group_size": 128}, blocks[2])
    with pytest.raises(ConfigError):  # a group wider than the micro model's 32-wide layers, before training
        mon.check(micro(blocks[0]))


@needs_monitor
def test_hf_trainer_real_monitor_bit_identical(tmp_path, blocks):
    from qrobust.integrations import QrobustTrainerCallback, make_monitor
    t0, m0 = hf_train(tmp_path / "a", blocks)
    t0.train()
    mon = make_monitor({"every": 2, "n_blocks": 4, "batch_size": 2, "bits": [3], "group_size": 16}, blocks[2])
    t1, m1 = hf_train(tmp_path / "b", blocks, QrobustTrainerCallback(mon, verbose=False))
    t1.train()
    assert all(torch.equal(v, m1.state_dict()[k]) for k, v in m0.state_dict().items())
    m1.eval()
    last = [ln for ln in read_log(tmp_path / "b" / "logs" / "monitor.jsonl") if "monitor/loss_fp" in ln][-1]
    assert last["step"] == 6 and last["monitor/loss_fp"] == pytest.approx(fp_loss(m1, blocks[2]), rel=1e-5)


@needs_monitor
@needs_lightning
def test_lightning_real_monitor_bit_identical(tmp_path, blocks):
    from qrobust.integrations import QrobustLightningCallback, make_monitor
    _, m0 = pl_fit(tmp_path / "a", blocks)
    mon = make_monitor({"every": 2, "n_blocks": 4, "batch_size": 2, "bits": [3], "group_size": 16}, blocks[2])
    _, m1 = pl_fit(tmp_path / "b", blocks, QrobustLightningCallback(mon, verbose=False))
    assert all(torch.equal(v, m1.state_dict()[k]) for k, v in m0.state_dict().items())
    assert [r.step for r in mon.history] == [2, 4, 6]
