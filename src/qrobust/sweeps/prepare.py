"""Before any checkpoint loads: the sweep's variants, its trajectory (with averaged checkpoints to make), and
every refusal that would otherwise stop a sweep part-way (bad options, missing corpora, uncached hub
revisions, streamed sweeps asked for what needs the whole model, lengths past the model's positions)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..averaging.averagers import AverageJob
from ..averaging.run import plan_for_sweep
from ..checks import check_seq_len
from ..config import DataConfig, SweepConfig, parse_config
from ..data.evalset import EvalSet, checkpoint_data_config, default_calibration_length, has_training_data
from ..errors import CheckpointError, ConfigError
from ..quant import QuantSpec, get_quantizer, needs_calibration
from ..quant.pipelines.streamed import check_streamable
from ..sources import load_source, missing_line, not_cached
from ..trajectory import Checkpoint, Trajectory


def variants(cfg: SweepConfig) -> list[QuantSpec]:
    """Every (method, bits, group size) of the config, or every (method, format) when it names formats;
    each method's options checked."""
    common = dict(sym=cfg.sym, include=tuple(cfg.include), exclude=tuple(cfg.exclude))
    if cfg.formats:
        specs = [QuantSpec(method=m, format=f, options=tuple(sorted(opts.items())), **common)  # type: ignore[arg-type]
                 for m, opts in cfg.method_specs() for f in cfg.formats]
    else:
        specs = [QuantSpec(method=m, bits=b, group_size=g, options=tuple(sorted(opts.items())), **common)  # type: ignore[arg-type]
                 for m, opts in cfg.method_specs() for b in cfg.bits for g in cfg.group_sizes]
    for s in specs:
        get_quantizer(s.method).check_options(dict(s.options))
    return specs


def averaged_dir(cfg: SweepConfig) -> Path:
    return Path(cfg.out) / "averaged"


def sweep_trajectory(cfg: SweepConfig) -> tuple[Trajectory, dict[str, AverageJob]]:
    """The swept trajectory: the source, plus the averaged checkpoints of ``cfg.average`` (folder -> job).

    Averaged checkpoints live in ``OUT/averaged`` and are made lazily, by the worker that claims them.
    What would stop the sweep part-way (checkpoints without a training corpus and no corpus named, hub
    revisions missing from the offline cache) is refused here, before any checkpoint is loaded."""
    traj = load_source(cfg.trajectory)
    pending: dict[str, AverageJob] = {}
    if cfg.average:
        traj, pending = plan_for_sweep(traj, cfg.average, averaged_dir(cfg))
    originals = [c for c in traj if c.path not in pending]  # averaged ones are made from these
    check_corpora(cfg, traj, originals)
    missing = not_cached(originals)
    if missing:
        raise CheckpointError(missing_line(missing, len(originals)))
    return traj, pending


def missing_corpora(cfg: SweepConfig) -> list[str]:
    """The corpus keys a checkpoint without training data needs and the sweep config leaves unset."""
    calibrated = sorted({s.method for s in variants(cfg) if needs_calibration(s)})
    out = [] if cfg.eval.corpus else ["eval.corpus"]
    if calibrated and not cfg.calibration.corpus:
        out.append(f"calibration.corpus ({', '.join(calibrated)} calibrate{'s' if len(calibrated) == 1 else ''})")
    if cfg.geometry is not None and not cfg.geometry.corpus:
        out.append("geometry.corpus")
    return out


def no_corpus(traj: Trajectory, missing: list[str]) -> ConfigError:
    what = (f"open-model preset '{traj.name}' ({traj.preset})" if traj.preset else
            f"trajectory '{traj.source or traj.name}' (checkpoints without qrobust training data)")
    return ConfigError(f"the {what} has no training corpus to evaluate or calibrate on: set "
                       f"{', '.join(missing)} in the sweep config (a corpus spec, e.g. text:PATH or hf:NAME)")


def check_corpora(cfg: SweepConfig, traj: Trajectory, originals: list[Checkpoint]) -> None:
    """Eval, calibration and geometry sets default to the training corpus; a preset, hub repo or folder
    of foreign checkpoints has none, so the sweep needs them named (checked from files, nothing loaded)."""
    missing = missing_corpora(cfg)
    if not missing or traj.data:
        return
    if traj.preset or any(has_training_data(c) is False for c in originals):
        raise no_corpus(traj, missing)


def data_config(cfg: SweepConfig, traj: Trajectory, ck: Checkpoint) -> DataConfig | None:
    """The training data config: from the trajectory manifest, else from the checkpoint's own state. None
    (no training corpus) only when the sweep names every corpus it needs: a Hub revision fetched only now,
    or an averaged checkpoint, is refused here, before it is loaded, rather than evaluated on a default."""
    if traj.data:
        return parse_config(DataConfig, traj.data, f"'data' in the manifest of {traj.source}")
    data = checkpoint_data_config(ck.path)
    missing = missing_corpora(cfg) if data is None else []
    if missing:
        raise no_corpus(traj, missing)
    return data


def check_stream(cfg: SweepConfig, specs: list[QuantSpec]) -> None:
    """What a streamed sweep cannot do, refused before any work."""
    if cfg.geometry is not None or cfg.tasks is not None:
        raise ConfigError("stream: true evaluates losses block by block; loss geometry and downstream tasks need "
                          "the whole model: drop 'geometry' / 'tasks' or set stream: false")
    check_streamable(specs)


def check_lengths(cfg: SweepConfig, model_config: Any, ck: Checkpoint, es: EvalSet, todo: list[QuantSpec],
                  data_cfg: DataConfig | None) -> None:
    """eval.seq_len and the calibration length must fit the model's positions: refused before any work."""
    check_seq_len(model_config, es.blocks.shape[1], ck.path, "eval.seq_len", "eval.seq_len")
    if any(needs_calibration(s) for s in todo):
        n = cfg.calibration.seq_len or default_calibration_length(data_cfg, model_config)
        check_seq_len(model_config, n, ck.path, "calibration.seq_len", "calibration.seq_len")
