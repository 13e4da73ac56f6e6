"""The one training loop every fine-tuning objective here runs in: Accelerate, checkpoints, resume, logs.

An objective supplies `step_fn(step) -> (loss, metrics)`; the loop owns everything else:

- mixed precision through `accelerator.autocast()` when the policy's `bf16` is on;
- gradient accumulation: `grad_accum` calls of `step_fn` per optimizer update, each loss divided by it;
- several processes (`accelerate launch --num_processes N`): each process draws its own share of the data
  (`loop.process_index`, `loop.num_processes`), and gradients are averaged across processes before every
  update. The model is not wrapped in DDP on purpose: one loss may run the model under several adapters
  (policy and posterior) before its backward pass, which DDP's reducer does not allow;
- `metrics.jsonl` (one line per update, main process, `dln.rundir.RunDir`), tensorboard when installed, a bar;
- `accelerator.save_state` checkpoints of the adapters' weights, the optimizer and every RNG under
  `run_dir/checkpoints/step-NNNNNN`, written to a temporary name and renamed, the last two kept. A run
  started again on the same `run_dir` loads the newest one and continues; `step_fn` must draw its data
  from (seed, step) only, so that a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from dln.errors import DLNError
from dln.rundir import RunDir
from reasoning.finetune.config import LoopConfig
from reasoning.finetune.policy import Policy

CHECKPOINTS = "checkpoints"
StepFn = Callable[[int], tuple[torch.Tensor, dict]]


class AdapterState:
    """The trainable adapter weights only, as Accelerate's custom checkpoint object (not the whole model)."""

    def __init__(self, params: dict[str, torch.nn.Parameter]) -> None:
        self.params = params

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().cpu().clone() for name, p in self.params.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.params) - set(state)
        if missing:
            raise DLNError(f"checkpoint lacks {len(missing)} adapter tensors (e.g. {sorted(missing)[0]})")
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(state[name].to(p.device))


class TrainLoop:
    """Runs `step_fn` for `config.steps` updates of the named adapters of `policy`, resumably."""

    def __init__(
        self, config: LoopConfig, run_dir: str | Path, policy: Policy, adapter_names: Sequence[str]
    ) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.config, self.policy = config, policy
        self.run_dir = Path(run_dir)
        self.rundir = RunDir(run_dir)
        self.accelerator = Accelerator(
            mixed_precision="bf16" if policy.bf16 else "no", cpu=policy.device.type == "cpu"
        )
        set_seed(config.seed)
        self.params = policy.named_adapter_parameters(adapter_names)
        optimizer = torch.optim.AdamW(
            list(self.params.values()), lr=config.lr, weight_decay=config.weight_decay
        )
        # DeepSpeed ZeRO shards gradients and optimizer state (ZeRO-3 the weights too): its engine must own
        # the model. Its hooks sit on the submodules, so the policy keeps calling the unwrapped PEFT model.
        # (Written for `configs/accelerate/deepspeed_zero*.yaml`; not run on the CPU machines of this repo.)
        self.deepspeed = self.accelerator.state.deepspeed_plugin is not None
        if self.deepspeed:
            _, self.optimizer = self.accelerator.prepare(policy.model, optimizer)
        else:
            self.optimizer = self.accelerator.prepare(optimizer)
        self.accelerator.register_for_checkpointing(AdapterState(self.params))
        self.step = 0

    @property
    def process_index(self) -> int:
        return self.accelerator.process_index

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    # -- checkpoints ----------------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        root = self.run_dir / CHECKPOINTS
        return sorted(p for p in root.glob("step-*") if p.is_dir()) if root.is_dir() else []

    def resume(self) -> int:
        """Load the newest complete checkpoint, if any; returns the update it stopped after."""
        found = self.checkpoints()
        if not found:
            return 0
        self.accelerator.load_state(str(found[-1]))
        self.step = int(found[-1].name.split("-")[1])
        if self.is_main:
            self.rundir.truncate_metrics(self.step, key="step")
        return self.step

    def save(self) -> None:
        root = self.run_dir / CHECKPOINTS
        final = root / f"step-{self.step:06d}"
        tmp = root / f".tmp-step-{self.step:06d}"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(tmp))
        self.accelerator.wait_for_everyone()
        if self.is_main:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in self.checkpoints()[:-2]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    # -- the loop -------------------------------------------------------------------------------------
    def run(self, step_fn: StepFn, stop_after: int | None = None) -> list[dict]:
        """Train from the newest checkpoint to `config.steps`; returns this call's metric rows.

        Args:
            step_fn: builds the loss of micro-step `step` (update u runs micro-steps u*grad_accum ...).
            stop_after: end after this many updates of this call (tests use it to simulate a kill).
        """
        config = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.resume()
        writer = self._tensorboard()
        bar = self._bar()
        rows: list[dict] = []
        self.policy.model.train()
        while self.step < config.steps and (stop_after is None or len(rows) < stop_after):
            totals: dict[str, float] = {}
            for micro in range(config.grad_accum):
                with self.accelerator.autocast():
                    loss, metrics = step_fn(self.step * config.grad_accum + micro)
                self.accelerator.backward(loss / config.grad_accum)
                for key, value in {"loss": float(loss.detach()), **metrics}.items():
                    totals[key] = totals.get(key, 0.0) + float(value) / config.grad_accum
            self._sync_gradients()
            if config.max_grad_norm > 0:
                grad_norm = self.accelerator.clip_grad_norm_(list(self.params.values()), config.max_grad_norm)
                totals["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            row = {"step": self.step, **totals}
            rows.append(row)
            self._log(row, writer)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.3g}" for k, v in list(totals.items())[:4]})
            if self.step % config.save_every == 0 or self.step == config.steps:
                self.save()
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        self.policy.model.eval()
        return rows

    def _sync_gradients(self) -> None:
        if self.num_processes == 1 or self.deepspeed:  # DeepSpeed reduces gradients itself
            return
        for p in self.params.values():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad = self.accelerator.reduce(p.grad, reduction="mean")

    def _log(self, row: dict, writer) -> None:
        if not self.is_main:
            return
        self.rundir.log(row)
        if writer is not None:
            for key, value in row.items():
                if key != "step":
                    writer.add_scalar(key, value, row["step"])

    def _tensorboard(self):
        if not self.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional; metrics.jsonl has everything
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    def _bar(self):
        if not (self.config.progress and self.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.config.steps, initial=self.step, desc="train", unit="update")
