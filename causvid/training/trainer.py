"""The one training loop for every stage (diffusion / teacher forcing, ODE regression, DMD, consistency
distillation).

Per step: the generator is updated (every `dfake_gen_update_ratio`-th step when there is a critic), then the
critic; each update accumulates `grad_accum` micro-batches, clips the gradient norm and steps AdamW. Then the
EMA (for consistency distillation also the loss's target, copied into `Models.target` before each step),
logging, checkpoints. Which samples a step reads and every random draw are functions of (seed, step,
global sample index), so the numbers do not depend on the process count, on accumulation or on resuming.
"""
import math
import resource
import signal
import time
from pathlib import Path

import torch
from tqdm import tqdm

from causvid.config import ConfigError, real_score_path, save_config
from causvid.data.datasets import LatentLMDBDataset, ODERegressionLMDBDataset
from causvid.data.prompts import read_prompt_file
from causvid.pipelines.text_to_video import load_text_encoder, load_vae, open_dit
from causvid.training import distributed as D
from causvid.training import lora
from causvid import rng
from causvid.errors import RunError
from causvid.training.checkpointing import (SHARDED, begin_checkpoint, finish_checkpoint, latest_checkpoint,
                                           load_checkpoint, prune_checkpoints, save_checkpoint, truncate_log)
from causvid.training.stages import Models, make_stage


class TrainingDiverged(RunError):
    pass


class Trainer:
    def __init__(self, cfg, logdir, *, no_save=False, no_visualize=False, disable_wandb=False, resume=None,
                 text_encoder=None):
        self.cfg, self.logdir = cfg, Path(logdir)
        self.no_save, self.no_visualize = no_save, no_visualize
        self.stage = make_stage(cfg)  # config errors surface before anything is loaded
        self.dataset = self._dataset()  # so do missing datasets
        self.dist = D.init_distributed()
        device = self.dist.device
        self.mesh = _mesh(self.dist, cfg.sequence_parallel_size)
        # each data-parallel rank reads its own samples; the ranks of a sequence-parallel group share them
        self.dp_rank, self.dp_size = self.mesh.get_local_rank("dp_shard"), self.mesh["dp_shard"].size()
        wan = cfg.wan_model_path

        # every model is built on the meta device (a LoRA model wrapped there, sequence parallelism attached),
        # sharded, then filled with its rank's rows only
        def load(path, ckpt=None, dtype=None, offload=False, lora_of=None):
            model, state = open_dit(path, ckpt, dtype=dtype)
            model, state = lora.open_wrapped((model, state), cfg, lora_of) if lora_of else (model, state)
            try:
                model = D.sequence_parallel(model, self.mesh)
            except ValueError as err:  # heads that do not split over the group
                raise ConfigError(str(err)) from None
            return D.materialize(model, state, device, cfg.mixed_precision, offload)

        # frozen models are kept in bf16 where training computes in it (CUDA with mixed precision)
        frozen_dtype = torch.bfloat16 if cfg.mixed_precision and device.type == "cuda" else torch.float32
        generator = load(wan, cfg.generator_ckpt, lora_of="generator")
        self.offload = bool(cfg.offload_frozen) and device.type != "cpu"
        self.text_encoder = text_encoder or _load_text_encoder(wan, "cpu" if self.offload else device,
                                                               generator.config.text_len)
        frozen = {}  # consistency distillation: the teacher and the EMA target start as the loaded generator
        if self.stage.needs_teacher:
            frozen = {"teacher": load(wan, cfg.generator_ckpt, frozen_dtype),
                      # the EMA's copy (the generator's parameter names, LoRA included): fp32 like what it averages
                      "target": load(wan, cfg.generator_ckpt, lora_of="generator")}
            frozen = {name: m.eval().requires_grad_(False) for name, m in frozen.items()}
        generator.gradient_checkpointing = bool(cfg.gradient_checkpointing)
        self.models = Models(generator.train(), **frozen)
        params = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
        self.optimizers = {"generator": torch.optim.AdamW(self.models.generator.parameters(), **params)}
        if self.stage.has_critic:
            fake = load(wan, lora_of="critic")
            fake.gradient_checkpointing = bool(cfg.gradient_checkpointing)
            self.models.fake_score = fake.train()
            self.models.real_score = load(real_score_path(cfg), dtype=frozen_dtype,
                                          offload=self.offload).eval().requires_grad_(False)
            self.optimizers["critic"] = torch.optim.AdamW(
                self.models.fake_score.parameters(), lr=cfg.lr_critic or cfg.lr, weight_decay=cfg.weight_decay,
                betas=(cfg.beta1 if cfg.beta1_critic is None else cfg.beta1_critic,
                       cfg.beta2 if cfg.beta2_critic is None else cfg.beta2_critic))
        self.negative = None
        if self.stage.needs_negative:
            self.negative = self.encode([cfg.negative_prompt])
        # the EMA starts at ema_start_step, or at once when it is the loss's target (as Causal Forcing's CD does)
        self.ema = D.ShardedEMA(self.models.generator, cfg.ema_weight) if self.stage.ema_target else None
        self.step = 0
        self.stop_requested = False
        self.stop_signal = None  # "SIGTERM" / "SIGINT" once one asked this process to stop
        self.history = []  # (step, logs) of this process's run
        if resume is not None:
            self._resume(resume)
        self.wandb = None if disable_wandb else _wandb_run(cfg, self.logdir, self.dist.is_main)

    # -- data -------------------------------------------------------------------------------------------------
    def _dataset(self):
        path = self.cfg.data_path
        if path is None or not Path(path).exists():
            raise FileNotFoundError(f"data_path {path!r} not found (the {type(self.stage).__name__} needs "
                                    f"{'a prompt file' if self.stage.data == 'prompts' else 'an LMDB'})")
        if self.stage.data == "prompts":
            return [{"prompts": p} for p in read_prompt_file(path)]
        if self.stage.data == "latents":
            return LatentLMDBDataset(path)
        dataset = ODERegressionLMDBDataset(path)
        if dataset.row_shape is not None:  # the rows' slots fit the step list: known now, not at step 1
            self.stage.check_slots(1 if len(dataset.row_shape) == 4 else dataset.row_shape[0], f"data_path {path}")
        return dataset

    def batch(self, step: int, micro: int, role: str = "generator") -> dict:
        """This rank's micro-batch: global sample positions, the dataset rows they map to, prompt embeddings.
        With a critic, each step has two batches, the generator's and the critic's (the originals draw a new
        batch for each update)."""
        size, n = self.cfg.batch_size, len(self.dataset)
        roles = 2 if self.stage.has_critic else 1
        slot = step * roles + (1 if role == "critic" else 0)
        first = ((slot * self.cfg.grad_accum + micro) * self.dp_size + self.dp_rank) * size
        positions = list(range(first, first + size))
        rows = [self.dataset[_row(p, n, self.cfg.seed)] for p in positions]
        device = self.dist.device
        batch = {"samples": positions, "prompts": [r["prompts"] for r in rows],
                 "context": self.encode([r["prompts"] for r in rows])}
        if self.negative is not None:
            batch["negative"] = self.negative.expand(size, -1, -1)
        if self.stage.data == "ode":
            batch["ode"] = torch.stack([r["ode_latent"] for r in rows]).to(device)
        elif self.stage.data == "latents":
            batch["clean"] = torch.stack([r["clean_latent"] for r in rows]).to(device)
        return batch

    def encode(self, prompts) -> torch.Tensor:
        """Prompt embeddings on the training device; an offloaded text encoder is moved in for the call only."""
        device = self.dist.device
        if not self.offload:
            return self.text_encoder.encode(prompts).to(device)
        try:
            return self.text_encoder.to(device).encode(prompts)
        finally:
            self.text_encoder.to("cpu")

    # -- one update -------------------------------------------------------------------------------------------
    def _update(self, name, model, loss_fn) -> float:
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(self.cfg.grad_accum):
            batch = self.batch(self.step, micro, role=name)
            with torch.autocast(self.dist.device.type, torch.bfloat16,
                                enabled=bool(self.cfg.mixed_precision) and self.dist.device.type == "cuda"):
                loss = loss_fn(self.models, batch, self.step) / self.cfg.grad_accum
            loss.backward()
            total += loss.item()
        D.reduce_sequence_parallel_grads(model, self.mesh)
        total = D.mean_across_ranks(total, self.dist.device)
        if not math.isfinite(total):  # stop before the bad gradient touches the weights
            last = latest_checkpoint(self.logdir)
            raise TrainingDiverged(f"{name} loss is {total} at step {self.step}; weights left as after step "
                                   f"{self.step - 1}; last good checkpoint: {last or 'none'}")
        torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.max_grad_norm)
        optimizer.step()
        return total

    def train_step(self) -> dict:
        cfg, logs = self.cfg, {}
        if self.models.target is not None:
            self.ema.copy_to(self.models.target)
        if not self.stage.has_critic or self.step % cfg.dfake_gen_update_ratio == 0:
            logs["generator_loss"] = self._update("generator", self.models.generator, self.stage.generator_loss)
        if self.stage.has_critic:
            logs["critic_loss"] = self._update("critic", self.models.fake_score, self.stage.critic_loss)
        if cfg.ema_weight > 0 and (self.step >= cfg.ema_start_step or self.stage.ema_target):
            if self.ema is None:
                self.ema = D.ShardedEMA(self.models.generator, cfg.ema_weight)
            else:
                self.ema.update(self.models.generator)
        self.step += 1
        return logs

    # -- the loop ---------------------------------------------------------------------------------------------
    def train(self) -> list:
        cfg = self.cfg
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        end = cfg.max_iters if cfg.max_iters is not None else float("inf")
        bar = tqdm(total=None if end == float("inf") else end, initial=self.step, disable=not self.dist.is_main)
        started, start_step = time.perf_counter(), self.step
        batch = cfg.batch_size * self.dp_size * cfg.grad_accum
        if cfg.total_batch_size is not None and cfg.total_batch_size != batch:  # informational in the originals
            self._print(f"note: the config's total_batch_size is {cfg.total_batch_size}; this run's global batch is "
                        f"{batch} (batch_size {cfg.batch_size} x {self.dp_size} data-parallel ranks x grad_accum "
                        f"{cfg.grad_accum})")
        try:
            while self.step < end:
                logs = self.train_step()
                self.history.append((self.step, logs))
                self._log(logs)
                bar.update(1)
                stop = D.any_rank(self.stop_requested, self.dist.device)
                if self.step % cfg.log_iters == 0 or stop or self.step >= end:
                    self.save()
                    self._visualize()
                if stop:
                    saved = "nothing saved (--no_save)" if self.no_save else f"saved step {self.step}"
                    self._print(f"{self.stop_signal or 'a signal on another rank'}: {saved}, stopping")
                    break
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            bar.close()
        seconds = time.perf_counter() - started
        done = self.step - start_step
        self._print(f"done: {done} step{'s' * (done != 1)} in {seconds:.1f} s "
                    f"({done / max(seconds, 1e-9):.2f} steps/s), peak memory {_peak_memory()}")
        return self.history

    def _on_signal(self, signum, _frame):
        """SIGTERM or Ctrl-C: finish the step, save, stop. A second Ctrl-C stops at once, without saving."""
        if self.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop_requested = True
        self.stop_signal = signal.Signals(signum).name

    # -- checkpoints ------------------------------------------------------------------------------------------
    def _trained(self) -> dict:
        return {"generator": self.models.generator,
                **({"critic": self.models.fake_score} if self.models.fake_score is not None else {})}

    def _training_state(self) -> dict:
        return {"step": self.step, "ema_started": self.ema is not None,
                "samples_seen": self.step * (2 if self.stage.has_critic else 1) * self.cfg.grad_accum
                * self.dp_size * self.cfg.batch_size}

    def save(self):
        if self.no_save:
            return
        if self.cfg.checkpoint_format == "sharded":
            tmp = begin_checkpoint(self.logdir, self.step) if self.dist.is_main else None
            tmp = D.broadcast_object(tmp)
            D.save_sharded(tmp / SHARDED, self._trained(), self.optimizers, self.ema)
            D.barrier()
            if self.dist.is_main:
                self._saved(finish_checkpoint(tmp, self._training_state()))
            D.barrier()
            return
        models = {"generator": D.full_model_state(self.models.generator),
                  "generator_ema": self.ema.full_state_dict(self.models.generator) if self.ema else None,
                  "critic": D.full_model_state(self.models.fake_score) if self.models.fake_score else None}
        optim = {name: D.full_optimizer_state(self._model_of(name), opt) for name, opt in self.optimizers.items()}
        models, adapters = lora.checkpoint_models(self.cfg, models)  # a LoRA model: its adapter alone
        if self.dist.is_main:
            self._saved(save_checkpoint(self.logdir, self.step, models,
                                        {**self._training_state(), "optimizers": optim},
                                        extra={"lora": adapters} if adapters else None))
        D.barrier()

    def _saved(self, path):
        prune_checkpoints(self.logdir, self.cfg.keep_last_n)
        save_config(self.cfg, self.logdir / "config.yaml")
        self._print(f"saved {path}")

    def _model_of(self, name):
        return self._trained()[name]

    def _resume(self, resume):
        folder = latest_checkpoint(self.logdir) if resume == "latest" else Path(resume)
        if folder is None:
            if self.dist.is_main:
                truncate_log(self.logdir / "log.txt", 0)
            self._print(f"resume: no checkpoint in {self.logdir}, starting from step 0")
            return
        models, state = load_checkpoint(folder)
        if models is None:  # sharded: each rank reads its shards, whatever the world size that wrote them
            if state["ema_started"] and self.ema is None:
                self.ema = D.ShardedEMA(self.models.generator, self.cfg.ema_weight)
            D.load_sharded(folder / SHARDED, self._trained(), self.optimizers, self.ema if state["ema_started"]
                           else None)
            self._resumed(folder, state)
            return
        D.load_full_model_state(self.models.generator, models["generator"], lora.strict_load(self.cfg, "generator"))
        if self.models.fake_score is not None:
            D.load_full_model_state(self.models.fake_score, models["critic"], lora.strict_load(self.cfg, "critic"))
        for name, opt in self.optimizers.items():
            D.load_full_optimizer_state(self._model_of(name), opt, state["optimizers"][name])
        if state["ema_started"]:
            self.ema = D.ShardedEMA(self.models.generator, self.cfg.ema_weight)
            self.ema.load_full_state_dict(self.models.generator, models["generator_ema"])
        self._resumed(folder, state)

    def _resumed(self, folder, state):
        self.step = state["step"]
        if self.dist.is_main:  # the log reads as one run: drop the lines of the steps that are run again
            truncate_log(self.logdir / "log.txt", self.step)
        self._print(f"resumed from {folder} at step {self.step}")

    # -- output -----------------------------------------------------------------------------------------------
    def _print(self, text):
        if self.dist.is_main:
            tqdm.write(text)
            self.logdir.mkdir(parents=True, exist_ok=True)
            with open(self.logdir / "log.txt", "a") as f:
                f.write(text + "\n")

    def _log(self, logs):
        self._print(f"step {self.step} " + " ".join(f"{k} {v:.6f}" for k, v in logs.items()))
        if self.wandb is not None:
            self.wandb.log(logs, step=self.step)

    def _visualize(self):
        output = getattr(self.stage, "last_output", None)
        if self.no_visualize or output is None or not self.dist.is_main:
            return
        from causvid.video_io import write_video
        if not hasattr(self, "_vae"):
            self._vae = load_vae(self.cfg.wan_model_path, dtype=torch.float32, device=self.dist.device)
        with torch.no_grad():
            pixels = self._vae.decode(output[:1].float())
        write_video(self.logdir / "samples" / f"step_{self.step:06d}.mp4", pixels[0])


def _row(position: int, n: int, seed: int) -> int:
    """Dataset row of a global sample position: a fresh permutation of the data every epoch."""
    epoch, offset = divmod(position, n)
    return int(torch.randperm(n, generator=rng.generator(seed, "epoch", epoch))[offset])


def _mesh(d, sequence_parallel_size):
    try:
        return D.parallel_mesh(d, sequence_parallel_size)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _load_text_encoder(wan, device, text_len):
    return load_text_encoder(wan, text_len, dtype=torch.float32, device=device)


def _peak_memory() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (CUDA)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (peak RSS)"


_PLACEHOLDERS = {"", "WANDB_KEY", "{your key}", "your key"}


def _wandb_run(cfg, logdir, is_main):
    """A wandb run when the config carries a real key (not the shipped placeholders) and wandb is installed."""
    if not is_main or cfg.wandb_key is None or cfg.wandb_key in _PLACEHOLDERS:
        return None
    try:
        import wandb
    except ImportError:
        print("wandb is configured but not installed (pip install wandb); logging to text only")
        return None
    wandb.login(host=cfg.wandb_host, key=cfg.wandb_key)
    return wandb.init(entity=cfg.wandb_entity, project=cfg.wandb_project, name=cfg.wandb_name, dir=str(logdir),
                      config=dict(cfg))
