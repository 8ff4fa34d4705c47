"""What ``--resume`` needs: the saved run's settings with the few options that may change, train_state.pt (the
model, optimiser, schedule, loss scaler, history, early-stopping counters and every random generator's state,
all loadable with ``torch.load(weights_only=True)``), and the schedule re-planned when --epochs changes."""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnncli.core.atomic import atomic_path
from cnncli.core.errors import UsageError
from cnncli.train import run_folder
from cnncli.train.config import TrainConfig
from cnncli.train.epoch import TrainStep

STATE_FILE = run_folder.STATE_FILE

# options --resume may change; every other option given must match the saved run
RESUME_CHANGEABLE = ("epochs", "patience", "workers", "device", "amp", "compile", "channels_last", "quiet", "log")


@dataclass(frozen=True)
class ResumedConfig:
    cfg: TrainConfig  # the run's saved settings with what --resume changed
    planned_epochs: int  # the --epochs the run's schedule was planned over (args.json's)


def resume_config(cfg: TrainConfig) -> ResumedConfig:
    """The saved run's settings (args.json), with what --resume may change taken from ``cfg``. DATA is optional
    (the run records it); any other option given on the command line (``cfg.explicit``) that differs from the
    run's is refused in one sentence, never ignored."""
    run = Path(cfg.resume).expanduser()
    if not (run / STATE_FILE).is_file() or not (run / "args.json").is_file():
        raise UsageError(f"{run} has no {STATE_FILE} and args.json to resume from; pass a run folder made by "
                         "cnncli train.")
    saved = TrainConfig.load(run / "args.json")
    if cfg.out and Path(cfg.out).expanduser().resolve() != run.resolve():
        raise UsageError(f"--resume continues the run in {run}; drop --out {cfg.out} (or start a new run there "
                         "without --resume).")
    recorded = Path(saved.data).expanduser()
    changes: dict = {}
    if cfg.data:
        if recorded.is_absolute() and Path(cfg.data).expanduser().resolve() != recorded.resolve():
            raise UsageError(f"--resume {run} trains on {saved.data}, not {cfg.data}; drop DATA to continue the run, "
                             "or start a new run on the new data.")
        changes["data"] = str(Path(cfg.data).expanduser().resolve())
    elif not recorded.exists():
        raise UsageError(f"the dataset of {run}, {saved.data}, is not found from here; pass it as DATA.")
    differing = [name for name in sorted(cfg.explicit) if name not in RESUME_CHANGEABLE + ("data", "out", "resume")
                 and getattr(cfg, name) != getattr(saved, name)]
    if differing:
        name = differing[0]
        more = f" (and {len(differing) - 1} more)" if len(differing) > 1 else ""
        changeable = ", --".join(n.replace("_", "-") for n in RESUME_CHANGEABLE)
        raise UsageError(
            f"--resume continues {run} with its saved settings, but --{name.replace('_', '-')} {getattr(cfg, name)} "
            f"differs from the run's {getattr(saved, name)}{more}; only --{changeable} "
            "can change on resume: drop it, or start a new run.")
    changes.update({name: getattr(cfg, name) for name in RESUME_CHANGEABLE if name in cfg.explicit})
    changes.update(quiet=cfg.quiet, resume=str(run), out=str(run))
    return ResumedConfig(replace(saved, **changes), planned_epochs=saved.epochs)


def check_dataset_unchanged(run: Path, cfg: TrainConfig) -> None:
    """--resume only on the dataset the run started on, file for file: a seeded split of a changed file list is
    another split, and images trained on could land in validation without a word. The run's last checkpoint
    records the list's fingerprint (``training.split``); a changed list is refused in one sentence."""
    from cnncli.data.eval_split import dataset_fingerprint
    from cnncli.models.checkpoint import read_card

    last = run / "last.safetensors"
    if not last.is_file():
        return
    record = (read_card(last).training or {}).get("split") or {}
    if not record.get("fingerprint"):
        return
    now, n_now = dataset_fingerprint(cfg.data, cfg.val_csv, cfg.allow_outside)
    if now == record["fingerprint"]:
        return
    counts = f" ({n_now} images now, {record.get('n_images', '?')} recorded)" if n_now is not None else ""
    raise UsageError(f"{cfg.data} has changed since {run} started{counts}: resuming would split it anew and could "
                     "move images it trained on into validation; put the dataset back as it was, or start a new "
                     "run on it.")


# ---------------------------------------------------------------- random generators


def rng_state() -> dict:
    """The global generators' states as tensors, numbers and lists (weights_only-loadable): python's random,
    numpy's legacy global generator, torch's CPU generator and, when CUDA is up, each CUDA device's."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(internal), "python_gauss": gauss_next,
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                       "cached_gaussian": float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Put back what :func:`rng_state` saved; generators a state file predates (numpy, CUDA) are left alone."""
    if "python" in state:
        random.setstate((3, tuple(int(v) for v in state["python"]), state.get("python_gauss")))
    if "numpy" in state:
        saved = state["numpy"]
        np.random.set_state(("MT19937", saved["keys"].numpy().astype(np.uint32), saved["pos"], saved["has_gauss"],
                             saved["cached_gaussian"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------- train_state.pt


@dataclass
class RunRecord:
    """The epochs so far, as train_state.pt keeps them: one results row per epoch, the best epoch and its score
    (higher is better), the epochs without improvement (for --patience), and the last epoch whose files are on
    disk."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float | None = None
    bad_epochs: int = 0
    saved_epoch: int = 0

    def add(self, row: dict, score: float) -> bool:
        """Record epoch ``row["epoch"]`` with its monitored ``score``; True when it is the best so far."""
        self.history.append(row)
        improved = self.best_score is None or score > self.best_score
        if improved:
            self.best_epoch, self.best_score, self.bad_epochs = row["epoch"], score, 0
        else:
            self.bad_epochs += 1
        return improved

    @classmethod
    def from_state(cls, state: dict) -> RunRecord:
        epoch = int(state["epoch"])
        return cls(history=list(state["history"]), best_epoch=int(state["best_epoch"]), best_score=state["best_score"],
                   bad_epochs=int(state["bad_epochs"]), saved_epoch=epoch)


def save_state(path: Path, epoch: int, model: nn.Module, step: TrainStep, record: RunRecord,
               ema: dict | None = None) -> None:
    """train_state.pt after ``epoch``, written atomically: the model, ``step``'s optimiser, schedule and loss scaler,
    ``record``, the model EMA (--ema) and the random generators."""
    scaler = step.scaler
    state = {
        "model": model.state_dict(), "optimizer": step.optimizer.state_dict(), "scheduler": step.scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {}, "epoch": epoch,
        "history": record.history, "best_epoch": record.best_epoch, "best_score": record.best_score,
        "bad_epochs": record.bad_epochs, "rng": rng_state(),
    }
    if ema is not None:
        state["ema"] = ema
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path) -> dict:
    """train_state.pt as saved (weights_only: tensors, numbers, strings, lists and dicts only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def replan_schedule(optimizer, cfg: TrainConfig, steps_per_epoch: int, planned: int, steps_done: int):
    """--resume with another --epochs: the schedule planned again over ``cfg.epochs``, as if the run had been
    started with it, moved on to the saved step. Returns the schedule and the sentence for the log."""
    from cnncli.train.optim import build_scheduler

    was = optimizer.param_groups[0]["lr"]
    for group in optimizer.param_groups:
        group["lr"] = group.get("initial_lr", group["lr"])
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": replaying the plan
        for _ in range(steps_done):
            scheduler.step()
    now = optimizer.param_groups[0]["lr"]
    note = (f"--epochs {cfg.epochs} (the run was planned for {planned}): the {cfg.schedule} schedule is "
            f"re-planned over {cfg.epochs} epochs and continues at its step {steps_done}, learning rate "
            f"{now:.3g} (it was {was:.3g})")
    return scheduler, note
