"""The training loop, `train(config)`: data in, checkpoints, metrics and a summary out; one process or many.

What a run trains on is a `Task` the trainer is given, not a subclass: `Pretraining` here, `sft.FineTuning` there.
A task names the tokenizer and model, the loader, the loss mask and the evaluation; the loop, optimizer, checkpoints
and resume are the trainer's alone. Manual: docs/training.md
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from gpt25 import checkpoint as ckpt
from gpt25.data import load_split
from gpt25.data.loader import ShardLoader
from gpt25.eval import evaluate_hellaswag, evaluate_loss, load_hellaswag
from gpt25.eval.core import CoreTask, evaluate_core, load_core_tasks
from gpt25.files import write_json_atomic
from gpt25.model import ModelConfig, TransformerLM, parameter_groups
from gpt25.optim import AdamW, Muon, clip_grad_norm, cross_entropy, learning_rate
from gpt25.tokenizer import Tokenizer
from gpt25.train import distributed
from gpt25.train.config import RunConfig, TrainConfig
from gpt25.train.throughput import peak_flops
from gpt25.train.tracking import Tracker


class TrainingDiverged(ValueError):
    """The loss, gradient norm or weights became NaN or inf; the last good checkpoint is left as it was."""


def train(config: RunConfig, task: Task | None = None) -> dict[str, Any]:
    """Run (or resume) one run, pretraining unless `task` says otherwise; returns its summary (losses, speed, paths).
    Under torchrun this joins (and afterwards leaves) the process group, unless the caller made it."""
    caller_owns_group = torch.distributed.is_initialized()
    context = distributed.init_distributed(config.device)
    try:
        return Trainer(config, context, task).run()
    finally:
        if not caller_owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def build_optimizer(model: torch.nn.Module, config: RunConfig) -> AdamW:
    """--optimizer's: AdamW over `parameter_groups`, or Muon for the blocks' matrices and AdamW for the rest."""
    muon = config.optimizer == "muon"
    groups = parameter_groups(model, config.weight_decay, config.decay_all, muon=muon)
    adam = {"lr": config.lr, "betas": (config.beta1, config.beta2), "eps": config.eps,
            "weight_decay": config.weight_decay}
    return Muon(groups, muon_lr=config.muon_lr, **adam) if muon else AdamW(groups, **adam)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group's lr for this step: `lr`, times a Muon group's ratio of its peak to AdamW's."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_ratio", 1.0)


@contextlib.contextmanager
def stop_signals() -> Iterator[list[str]]:
    """Yields a list that collects the names of the SIGTERM / SIGINT received, so the loop can save and exit at the
    next step boundary; the previous handlers come back afterwards (Python sets handlers in the main thread only)."""
    received: list[str] = []
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGTERM, signal.SIGINT):
            previous[number] = signal.signal(number, lambda number, _: received.append(signal.Signals(number).name))
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


class Task:
    """What a run trains on. The trainer calls `setup`, `base_model`, `loader`, then, as the run goes,
    `on_start`, `evaluate` and `summary`; `ignore_index` marks the targets left out of the loss, and
    `core_tasks` are scored every --core_every steps (pretraining only)."""

    ignore_index: int | None = None
    core_tasks: list[CoreTask] | None = None

    def setup(self, config: RunConfig, context: distributed.DistributedContext) -> tuple[RunConfig, Tokenizer,
                                                                                          ModelConfig]:
        """The resolved config (the one config.json records), the tokenizer, and the model's config."""
        raise NotImplementedError

    def base_model(self, config: RunConfig) -> TransformerLM | None:
        """Weights to start from, or None for a freshly initialised model."""
        return None

    def resume_source(self, config: RunConfig) -> str:
        """The checkpoint to resume (a path, 'latest', or '' to start fresh)."""
        return config.checkpoint

    def loader(self, trainer: Trainer) -> Any:
        """The training batches: `next_batch()` gives (inputs, targets), each (batch, seq)."""
        raise NotImplementedError

    def on_start(self, trainer: Trainer) -> None:
        """Written beside RUN_DIR/config.json on the main rank before the first step."""

    def evaluate(self, trainer: Trainer) -> dict[str, Any]:
        raise NotImplementedError

    def summary(self, trainer: Trainer) -> dict[str, Any]:
        return {}


class Pretraining(Task):
    """`gpt25 train`: token shards in, validation loss / perplexity / bits per byte (HellaSwag, CORE) out."""

    def setup(self, config: TrainConfig, context: distributed.DistributedContext) -> tuple[TrainConfig, Tokenizer,
                                                                                            ModelConfig]:
        if not config.data:
            raise ValueError("--data is required: a directory made by `gpt25 data prepare`")
        # --tokenizer, else the one `gpt25 data prepare` left beside the shards
        directory = Path(config.tokenizer) if config.tokenizer else Path(config.data) / "tokenizer"
        if not directory.is_dir():
            raise FileNotFoundError(f"tokenizer directory {directory} not found; pass --tokenizer DIR "
                                    "(the one the shards were prepared with)")
        tokenizer = Tokenizer.load(directory)
        return dataclasses.replace(config, tokenizer=str(directory)), tokenizer, config.model_config(tokenizer.vocab_size)

    def loader(self, trainer: Trainer) -> ShardLoader:
        config, context = trainer.config, trainer.context
        self.val_tokens = load_split(config.data, "val", trainer.tokenizer)
        self.hellaswag = load_hellaswag(config.hellaswag) if config.hellaswag else None
        self.core_tasks = load_core_tasks(config.core_bundle, config.core_limit) if config.core_every else None
        # eval_steps global batches (without accumulation): the same tokens whatever the number of ranks
        self.eval_tokens = config.eval_steps * config.batch_size * context.world_size * config.context_length
        return ShardLoader(config.data, "train", config.batch_size, config.context_length, rank=context.rank,
                           world_size=context.world_size, seed=config.seed, device=context.device,
                           tokenizer=trainer.tokenizer)

    def evaluate(self, trainer: Trainer) -> dict[str, Any]:
        """Validation loss / perplexity / bits per byte (and HellaSwag) on every rank, each scoring a share."""
        config, device = trainer.config, trainer.context.device
        result = evaluate_loss(trainer.eval_model(), self.val_tokens, trainer.tokenizer,
                               batch_size=config.batch_size, context_length=config.context_length, device=device,
                               max_tokens=self.eval_tokens, autocast_dtype=trainer.autocast_dtype)
        metrics = {name: result[name] for name in ("val_loss", "val_perplexity", "val_bpb")}
        if self.hellaswag is not None:
            with trainer.autocast():
                scores = evaluate_hellaswag(trainer.eval_model(), trainer.tokenizer, self.hellaswag,
                                            batch_size=config.batch_size, device=device,
                                            limit=config.hellaswag_limit or None)
            metrics |= {"hellaswag_acc": scores["acc"], "hellaswag_acc_norm": scores["acc_norm"]}
        return metrics


class Trainer:
    """Everything one run holds: model, optimizer, data, tracker; `loop()` is the training loop."""

    def __init__(self, config: RunConfig, context: distributed.DistributedContext, task: Task | None = None) -> None:
        self.context, self.task = context, task or Pretraining()
        if Path(config.out).exists() and not Path(config.out).is_dir():
            raise NotADirectoryError(f"--out {config.out} is a file; give a directory for the run")
        config, self.tokenizer, self.model_config = self.task.setup(config, context)
        parallel = config.parallel if context.is_distributed else "none"
        compile_setting = "on" if config.compiles_on(context.device.type) else "off"
        # The resolved values, not 'auto' or -1: config.json and each checkpoint record what really ran.
        self.config = dataclasses.replace(config, min_lr=config.resolved_min_lr, device=str(context.device),
                                          grad_accum_steps=config.accumulation_for(context.world_size),
                                          parallel=parallel, compile=compile_setting)
        self.run_dir = Path(config.out)
        self.dtype = getattr(torch, config.dtype)  # float32 or bfloat16, as --dtype's choices allow
        # Seeded before the model is built: every rank initialises the same weights (CPU) and a run repeats exactly.
        random.seed(config.seed)
        np.random.seed(config.seed)
        torch.manual_seed(config.seed)
        base = self.task.base_model(self.config)
        self.model = distributed.build_model(self.model_config, context, parallel, self.dtype) if base is None \
            else distributed.parallelize(base.to(context.device), context, parallel, self.dtype)
        self.lm = distributed.unwrap(self.model)
        self.sharded = distributed.is_fsdp(self.model)
        # FSDP's mixed-precision policy already casts the parameters to bfloat16: no autocast on top of it.
        self.autocast_dtype = None if self.dtype == torch.float32 or self.sharded else self.dtype
        # The loss is compiled with the forward, so the (batch, seq, vocab) logits never round-trip memory in eager.
        self.compute_loss = torch.compile(self.model_loss) if compile_setting == "on" else self.model_loss
        self.optimizer = build_optimizer(self.lm, self.config)
        self.loader = self.task.loader(self)
        self.tokens_per_step = (config.batch_size * self.config.grad_accum_steps * config.context_length
                                * context.world_size)
        self.flops_per_token = self.lm.flops_per_token()
        self.peak_flops, self.peak_source = peak_flops(context.device, self.dtype)
        self.step = 0
        self.last_checkpoint: Path | None = None
        self.last_eval: dict[str, Any] = {}

    # ----- setup pieces -----

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.context.device.type, dtype=self.autocast_dtype)

    def resume(self) -> None:
        """Load --checkpoint (a path, or 'latest' in --out; 'latest' with none there starts fresh)."""
        source = self.task.resume_source(self.config)
        if not source:
            if ckpt.list_checkpoints(self.run_dir):
                raise FileExistsError(f"{self.run_dir} already holds checkpoints; pass --checkpoint latest to resume "
                                      "them or choose a new --out")
            return
        if source == "latest":
            found = ckpt.list_checkpoints(self.run_dir)
            if not found:
                self.log_line(f"no checkpoint in {self.run_dir}; starting from scratch")
                return
            source = found[-1]
        path = ckpt.resolve_checkpoint(source)
        meta = ckpt.read_meta(path)
        ckpt.check_compatible(meta, self.model_config, self.tokenizer.fingerprint())
        if meta["step"] >= self.config.train_steps:
            raise ValueError(f"checkpoint {path} is at step {meta['step']} >= --train_steps "
                             f"{self.config.train_steps}; raise --train_steps to train further")
        train_state = ckpt.load_training_state(path, self.model, self.optimizer)
        self.restore_rank_state(train_state["ranks"])
        self.step = train_state["step"]
        self.last_checkpoint = path
        self.log_line(f"resumed from {path} at step {self.step}")

    def restore_rank_state(self, rank_states: list[dict]) -> None:
        """This rank's data position and RNG states; an imported checkpoint has none: its data starts over."""
        if not rank_states:
            self.log_line("the checkpoint records no data position (imported): the data starts from the beginning")
            return
        # The data position counts what all ranks consumed together, so any rank's fits another world size;
        # per-rank RNG streams have no counterpart there, so they restart from the seed.
        same_layout = len(rank_states) == self.context.world_size
        mine = rank_states[self.context.rank] if same_layout else rank_states[0]
        self.loader.load_state_dict(mine["loader"])
        if same_layout:
            ckpt.restore_rng_state(mine["rng"])

    def write_run_config(self) -> None:
        """RUN_DIR/config.json: every resolved setting plus what was derived from them."""
        derived = {"model": self.model_config.to_dict(), "world_size": self.context.world_size,
                   "tokens_per_step": self.tokens_per_step,
                   "global_batch_sequences": self.tokens_per_step // self.config.context_length,
                   "num_params": self.lm.num_params(), "flops_per_token": self.flops_per_token,
                   "peak_flops": self.peak_flops, "peak_flops_source": self.peak_source,
                   "tokenizer_fingerprint": self.tokenizer.fingerprint(), "torch_version": torch.__version__}
        write_json_atomic(self.run_dir / "config.json", self.config.to_dict() | {"derived": derived})

    def log_line(self, message: str) -> None:
        if self.context.is_main:
            tqdm.write(message)
            sys.stdout.flush()  # batch-job logs show progress even if the job is killed

    # ----- the run: `loop` is the whole training loop -----

    def run(self) -> dict[str, Any]:
        self.resume()
        tracker = None
        if self.context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.task.on_start(self)
            self.write_run_config()
            tracker = Tracker(self.run_dir, self.config.tracker, self.config.to_dict(), resume_step=self.step)
            self.log_line(f"{self.lm.num_params():,} parameters, {self.tokens_per_step:,} tokens/step, "
                          f"world size {self.context.world_size} ({self.config.parallel}), "
                          f"MFU peak {self.peak_flops / 1e12:.3g} TFLOP/s ({self.peak_source})")
        try:
            with stop_signals() as received:
                return self.loop(tracker, received)
        finally:
            if tracker is not None:
                tracker.close()

    def loop(self, tracker: Tracker | None, signals: list[str]) -> dict[str, Any]:
        start_step, started = self.step, time.perf_counter()
        timed_seconds, stopped, train_loss = 0.0, False, float("nan")
        window_seconds, window_steps = 0.0, 0  # since the last metrics row
        progress = tqdm(total=self.config.train_steps, initial=self.step, disable=not self.context.is_main,
                        desc="train", unit="step", dynamic_ncols=True, mininterval=0.5)
        try:
            while self.step < self.config.train_steps and not stopped:
                # ----- schedule, data, forward/backward with accumulation, clip, NaN guard, step -----
                step_started = time.perf_counter()
                train_loss, grad_norm, lr, stopped = self.train_step(bool(signals))
                step_seconds = time.perf_counter() - step_started
                if self.step > start_step + 1:  # the first step pays for warm-up / compilation
                    timed_seconds += step_seconds
                window_seconds, window_steps = window_seconds + step_seconds, window_steps + 1

                # ----- log: the progress line every step, a metrics row when due -----
                rate = self.tokens_per_step / step_seconds
                progress.update(1)
                progress.set_postfix_str(f"loss {train_loss:.4f} lr {lr:.2e} {rate:,.0f} tok/s "
                                         f"MFU {self.mfu(rate):.1%}", refresh=False)
                if tracker is not None and (self.is_due(self.config.log_every) or self.is_due(self.config.eval_every)):
                    window_rate = self.tokens_per_step * window_steps / window_seconds
                    tracker.log(self.step, {"train_loss": train_loss, "lr": lr, "grad_norm": grad_norm,
                                            "tokens_seen": self.step * self.tokens_per_step,
                                            "tokens_per_second": window_rate, "mfu": self.mfu(window_rate),
                                            "memory_gb": self.memory_gb(), "elapsed_s": time.perf_counter() - started})
                    window_seconds, window_steps = 0.0, 0

                # ----- evaluate (CORE on its own schedule) -----
                core_due = self.task.core_tasks is not None and self.is_due(self.config.core_every)
                if self.is_due(self.config.eval_every) or core_due:
                    metrics = self.task.evaluate(self) if self.is_due(self.config.eval_every) else {}
                    if core_due:
                        with self.autocast():
                            metrics["core"] = evaluate_core(self.eval_model(), self.tokenizer, self.task.core_tasks,
                                                            batch_size=self.config.batch_size,
                                                            device=self.context.device)["core"]
                    self.last_eval |= metrics
                    if tracker is not None:
                        tracker.log(self.step, metrics)
                    self.log_line(f"step {self.step}: " + ", ".join(
                        f"{name} {value:.4f}" for name, value in metrics.items() if value is not None))

                # ----- save (a stop request on any rank saves here too) -----
                if self.is_due(self.config.save_every) or stopped:
                    self.save()
        finally:
            progress.close()

        # ----- stop -----
        stopped_by = (signals[-1] if signals else "a signal on another rank") if stopped else None
        if stopped_by:
            self.log_line(f"{stopped_by} received: saved step {self.step} to {self.last_checkpoint}; "
                          "resume with --checkpoint latest")
        mean_rate = self.tokens_per_step * (self.step - start_step - 1) / timed_seconds if timed_seconds else None
        return self.summary(start_step, started, stopped_by, train_loss, mean_rate)

    def summary(self, start_step: int, started: float, stopped_by: str | None, train_loss: float,
                mean_rate: float | None) -> dict[str, Any]:
        """What `train` returns: where the run ended, its final losses, speed and paths."""
        return {"run_dir": str(self.run_dir), "step": self.step, "start_step": start_step,
                "train_steps": self.config.train_steps, "stopped_by": stopped_by,
                "final_train_loss": train_loss,
                **{f"final_{name}": self.last_eval.get(name) for name in ("val_loss", "val_perplexity", "val_bpb")},
                "hellaswag_acc_norm": self.last_eval.get("hellaswag_acc_norm"), "core": self.last_eval.get("core"),
                "tokens_seen": self.step * self.tokens_per_step, "tokens_per_second": mean_rate,
                "mfu": self.mfu(mean_rate) if mean_rate else None, "memory_gb": self.memory_gb(),
                "elapsed_s": time.perf_counter() - started, "num_params": self.lm.num_params(),
                "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
                "metrics": str(self.run_dir / "metrics.jsonl"), "config": str(self.run_dir / "config.json"),
                **self.task.summary(self)}

    # ----- what the loop calls: one optimizer step, evaluation, checkpoint -----

    def model_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy over the targets the task keeps; inputs, targets (batch, seq)."""
        return cross_entropy(self.model(inputs), targets, ignore_index=self.task.ignore_index)

    def train_step(self, stop_requested: bool) -> tuple[float, float, float, bool]:
        """One optimizer step over grad_accum_steps micro-batches: (loss averaged over micro-batches and ranks,
        grad norm, lr, whether any rank was asked to stop)."""
        # Update number step + 1: the first update already gets a non-zero warmup lr.
        lr = learning_rate(self.config.schedule, self.step + 1, self.config.lr, self.config.min_lr,
                           self.config.warmup_steps, self.config.train_steps)
        set_learning_rate(self.optimizer, lr)
        num_micro = self.config.grad_accum_steps
        loss_sum = torch.zeros((), device=self.context.device)
        for micro_step in range(num_micro):
            inputs, targets = self.loader.next_batch()  # (batch, seq) each
            with distributed.gradient_sync(self.model, micro_step == num_micro - 1):
                with self.autocast():
                    loss = self.compute_loss(inputs, targets)
                (loss / num_micro).backward()  # the summed gradients are then the mean over the micro-batches
            loss_sum += loss.detach().float()
        # --max_grad_norm 0 clips at infinity: nothing is scaled, but the norm is still measured for the log.
        grad_norm = clip_grad_norm(self.model.parameters(), self.config.max_grad_norm or math.inf)
        # One all-reduce and one device sync for loss, grad norm and stop flag, made before the optimizer step so that
        # a NaN/inf never reaches the weights (`check_finite`).
        stats = torch.stack([loss_sum / num_micro, grad_norm.to(loss_sum.device),
                             torch.tensor(float(stop_requested), device=loss_sum.device)])
        mean_loss, mean_grad_norm, stop_fraction = distributed.all_reduce_mean(stats, self.context).tolist()
        self.check_finite(mean_loss, mean_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return mean_loss, mean_grad_norm, lr, stop_fraction > 0  # any rank's signal stops all: they save together

    def check_finite(self, loss: float, grad_norm: float) -> None:
        """Stop before the update of step + 1 when its loss or gradient norm is NaN or inf."""
        for name, value in (("loss", loss), ("grad norm", grad_norm)):
            if not math.isfinite(value):
                raise self.diverged(f"{name} became {value} at step {self.step + 1}; the update was not applied")

    def diverged(self, what: str) -> TrainingDiverged:
        kept = (f"the last good checkpoint {self.last_checkpoint} is kept; lower --lr or raise --warmup_steps "
                f"and resume with --checkpoint {self.last_checkpoint}") if self.last_checkpoint else \
            "no checkpoint was saved yet; lower --lr or raise --warmup_steps"
        return TrainingDiverged(f"{what}, training stopped: {kept}")

    def eval_model(self) -> torch.nn.Module:
        """The model evaluation runs: FSDP's wrapper (it gathers the shards), else the uncompiled, unwrapped model."""
        return self.model if self.sharded else self.lm

    def save(self) -> None:
        """Checkpoint the current step (collective: every rank calls it), then drop old ones."""
        # Finite grads can still overflow the weights (a huge lr times weight decay): those are never saved.
        if not distributed.all_finite(self.model.parameters(), self.context):
            raise self.diverged(f"weights became non-finite at step {self.step}; they were not saved")
        rank_states = distributed.gather_objects(
            {"loader": self.loader.state_dict(), "rng": ckpt.capture_rng_state()}, self.context)
        meta = ckpt.make_meta(self.step, self.model_config, train_config=self.config.to_dict(),
                              tokenizer_fingerprint=self.tokenizer.fingerprint(),
                              world_size=self.context.world_size, sharded=self.sharded)
        path = self.run_dir / "checkpoints" / ckpt.step_dir_name(self.step)
        if self.sharded:
            ckpt.save_sharded_checkpoint(self.model, self.optimizer, self.step, path, meta=meta,
                                         rank_states=rank_states, rank=self.context.rank)
        elif self.context.is_main:
            ckpt.save_checkpoint(self.lm, self.optimizer, self.step, path, meta=meta, rank_states=rank_states)
        distributed.barrier(self.context)
        if self.context.is_main:
            ckpt.remove_old_checkpoints(self.run_dir, self.config.keep_checkpoints)
        self.last_checkpoint = path

    # ----- small helpers -----

    def is_due(self, every: int) -> bool:
        return self.step == self.config.train_steps or (every > 0 and self.step % every == 0)

    def mfu(self, tokens_per_second: float) -> float:
        achieved = self.flops_per_token * tokens_per_second / self.context.world_size  # FLOP/s per device
        if achieved > self.peak_flops:  # a measured ceiling, taken while other work had the cores: measured again
            peak, self.peak_source = peak_flops(self.context.device, self.dtype, beaten_by=achieved)
            if peak != self.peak_flops:
                self.peak_flops = peak
                self.log_line(f"MFU peak measured again: {peak / 1e12:.3g} TFLOP/s (training beat the last one)")
        return achieved / self.peak_flops

    def memory_gb(self) -> float | None:
        if self.context.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.context.device) / 2**30
