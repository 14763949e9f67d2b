"""The whole method on a CPU: data -> bidirectional teacher -> ODE pairs -> CausVid path and Causal-Forcing
path (framewise and chunkwise) -> evaluation -> report. Every stage runs the project's real code (the same
WanDiT, trainer, LMDB, ODE and rollout functions as the Wan-size runs) at toy size.

    python -m causvid.toy.pipeline --out runs/toy            # the full run
    python -m causvid.toy.pipeline --out runs/toy --quick    # a few steps per stage (tests, smoke runs)
    python -m causvid.toy.pipeline --out runs/toy --release checkpoints/toy   # also (re)make the shipped student

Resumable stage by stage: a stage that finished left `<out>/<stage>/DONE` and is skipped next time.
"""
import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from causvid.config import load_config
from causvid.data.lmdb import LatentLMDBWriter
from causvid.models.wan import WanDiT
from causvid.ode_data.trajectory import batch_noise, causal_ode_slots, ode_pairs, schedule
from causvid.toy import world
from causvid.toy.folder import write_toy_folder

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "toy"
LAYOUTS = {"framewise": 1, "chunkwise": 3}
#: Training videos start with the shape's centre in this range of pixels (x and y): the canvas centre, so a caption
#: names one video. With starts spread over the canvas (or over 12-20) a CPU-sized teacher must break the symmetry
#: between positions early in sampling, and in minutes of training it does not: its samples were fragments of the
#: right colour (shape and direction near chance). Motion and wrapping still take the shape anywhere in long rollouts.
START = (16, 16)
#: The stage whose student `--release` ships (checkpoints/toy, the README's main job; trained with the config of
#: the same name): Causal Forcing's chunkwise DMD student, the method's final model in the layout Self-Forcing
#: and Causal Forcing publish.
RELEASE = "cf_dmd_chunkwise"


@dataclass
class Budget:
    """Sizes and step counts of a run (--quick shrinks them for a smoke test)."""
    videos: int = 4096          # rendered training videos
    ode_prompts: int = 512      # ODE pairs / causal ODE data rows
    teacher_steps: int = 4000
    ar_steps: int = 400
    ode_steps: int = 300
    dmd_steps: int = 150
    cd_steps: int = 300         # Causal Forcing++: causal consistency distillation in place of ODE data + ODE init
    long_rollout: int = 4       # long-rollout DMD students roll out this many training lengths (Self-Forcing++)
    ode_euler_steps: int = 48   # the ODE data's Euler schedule (states saved at the student's levels)
    eval_videos: int = 32
    drift_videos: int = 16      # per model: rollouts of drift_factor times the training length (4 decided nothing)
    long_video_prompts: int = 16  # per DMD student: overlap vs rolling-window long videos (4 prompts decided nothing)
    long_video_factor: int = 4  # the long-video comparison and the streaming measurements: this many training lengths
    stream_pairs: int = 16      # per chunkwise DMD student: prompt-switch pairs and V2V videos (causvid.toy.streaming)
    teacher_sampling_steps: int = 50
    drift_factor: int = 8       # drift is measured on rollouts this many times the training length
    batch_size: int = 0         # 0: each config's own

    @classmethod
    def quick(cls):
        return cls(videos=32, ode_prompts=4, teacher_steps=2, ar_steps=1, ode_steps=1, dmd_steps=1, cd_steps=1,
                   ode_euler_steps=8, eval_videos=1, drift_videos=1, long_video_prompts=1, teacher_sampling_steps=2,
                   drift_factor=2, long_video_factor=2, batch_size=2, stream_pairs=1, long_rollout=2)


class ToyPipeline:
    def __init__(self, out, budget: Budget, seed: int = 0, log=print):
        self.out, self.budget, self.seed, self.log = Path(out), budget, seed, log
        self.times = {}

    # -- bookkeeping ------------------------------------------------------------------------------------------
    def stage(self, name, fn):
        folder = self.out / name
        done = folder / "DONE"
        if done.exists():
            self.times[name] = json.loads(done.read_text())["seconds"]
            self.log(f"[{name}] done earlier ({self.times[name]:.0f} s), skipped")
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        self.log(f"[{name}] ...")
        start = time.perf_counter()
        fn(folder)
        self.times[name] = time.perf_counter() - start
        done.write_text(json.dumps({"seconds": self.times[name]}))
        self.log(f"[{name}] {self.times[name]:.0f} s")
        return folder

    def train(self, folder, config, steps, **paths):
        from causvid.training.trainer import Trainer
        overrides = [f"max_iters={steps}", f"log_iters={max(steps, 1)}"] + [f"{k}={v}" for k, v in paths.items()]
        if self.budget.batch_size:
            overrides.append(f"batch_size={self.budget.batch_size}")
        cfg = load_config(CONFIGS / f"{config}.yaml", overrides=overrides)
        trainer = Trainer(cfg, folder / "run", no_visualize=True, resume="latest")
        trainer.train()
        return folder / "run" / f"checkpoint_model_{steps:06d}" / "model.pt", trainer.ema is not None

    def export(self, checkpoint, use_ema, folder, dtype=None):
        """A toy-world folder holding these weights (loadable by every CLI, usable as a teacher / critic)."""
        from causvid.pipelines.text_to_video import load_dit
        write_toy_folder(folder, load_dit(self.out / "base", checkpoint, use_ema=use_ema), dtype=dtype)
        return folder

    def release(self, folder):
        """The shipped student: a toy folder with the release stage's weights (EMA when trained with it) in
        bfloat16, which keeps it small; the CLIs load it in float32."""
        from causvid.toy.evaluate import has_ema
        checkpoint = _last(self.out / RELEASE)
        use_ema = has_ema(checkpoint)
        self.export(checkpoint, use_ema, folder, dtype=torch.bfloat16)
        results = json.loads((self.out / "evaluate" / "results.json").read_text())
        scores = next(r for r in results.values() if r["config"] == RELEASE)
        (Path(folder) / "release.json").write_text(json.dumps({
            "stage": RELEASE, "config": f"configs/toy/{RELEASE}.yaml", "seed": self.seed,
            "budget": asdict(self.budget), "ema": use_ema,
            "scores": {k: scores[k] for k in ("colour_acc", "shape_acc", "direction_acc", "all_acc")},
            "reproduce": "python -m causvid.toy.pipeline --out runs/toy --release checkpoints/toy",
        }, indent=2) + "\n")
        self.log(f"[release] {RELEASE} -> {folder}")
        return folder

    # -- stages -----------------------------------------------------------------------------------------------
    def run(self, release=None):
        b = self.budget
        self.stage("base", lambda f: write_toy_folder(f, WanDiT.from_preset("toy")))
        data = self.stage("data", self.make_data)
        teacher = self.stage("teacher", lambda f: self.export(
            *self.train(f, "teacher", b.teacher_steps, wan_model_path=self.out / "base",
                        data_path=data / "latents"), f / "model"))
        teacher_folder = teacher / "model"
        ode_pairs = self.stage("ode_pairs", lambda f: self.make_ode_pairs(f, teacher_folder))
        models = {"teacher (50-step, bidirectional)": ("teacher", teacher_folder, None)}
        for layout, block in LAYOUTS.items():
            common = dict(wan_model_path=teacher_folder, real_model_path=teacher_folder)
            # CausVid: ODE init from the bidirectional teacher's pairs, then DMD on noised data latents
            ode = self.stage(f"causvid_ode_{layout}", lambda f: self.train(
                f, f"ode_{layout}", b.ode_steps, generator_ckpt=teacher_folder, ode_layout="causvid",
                data_path=ode_pairs / "lmdb", **common))
            dmd = self.stage(f"causvid_dmd_{layout}", lambda f: self.train(
                f, f"causvid_dmd_{layout}", b.dmd_steps, generator_ckpt=_last(ode), data_path=data / "latents",
                **common))
            # Causal Forcing: AR diffusion (teacher forcing) -> causal ODE data -> ODE init -> DMD (self-rollout)
            ar = self.stage(f"ar_diffusion_{layout}", lambda f: self.train(
                f, f"ar_diffusion_{layout}", b.ar_steps, generator_ckpt=teacher_folder,
                data_path=data / "latents", **common))
            causal_data = self.stage(f"causal_ode_data_{layout}", lambda f: self.make_causal_ode_data(
                f, teacher_folder, _last(ar), block, data / "latents"))
            cf_ode = self.stage(f"cf_ode_{layout}", lambda f: self.train(
                f, f"ode_{layout}", b.ode_steps, generator_ckpt=_last(ar), data_path=causal_data / "lmdb",
                **common))
            cf_dmd = self.stage(f"cf_dmd_{layout}", lambda f: self.train(
                f, f"cf_dmd_{layout}", b.dmd_steps, generator_ckpt=_last(cf_ode), data_path=data / "prompts.txt",
                **common))
            # the same DMD without the originals' gradient through the KV cache (issue 13's comparison)
            cf_detached = self.stage(f"cf_dmd_{layout}_detached", lambda f: self.train(
                f, f"cf_dmd_{layout}", b.dmd_steps, generator_ckpt=_last(cf_ode), data_path=data / "prompts.txt",
                kv_cache_gradient="detached", **common))
            # the same DMD on windows of a rollout long_rollout times the training length (Self-Forcing++)
            frames = load_config(CONFIGS / f"cf_dmd_{layout}.yaml").image_or_video_shape[1]
            cf_long = self.stage(f"cf_dmd_{layout}_long", lambda f: self.train(
                f, f"cf_dmd_{layout}", b.dmd_steps, generator_ckpt=_last(cf_ode), data_path=data / "prompts.txt",
                long_rollout_frames=b.long_rollout * frames, **common))
            # Causal Forcing++: AR diffusion -> causal consistency distillation -> DMD (no ODE data)
            cd = self.stage(f"cf_cd_{layout}", lambda f: self.train(
                f, f"cf_cd_{layout}", b.cd_steps, generator_ckpt=_last(ar), data_path=data / "latents", **common))
            cfpp_dmd = self.stage(f"cfpp_dmd_{layout}", lambda f: self.train(
                f, f"cf_dmd_{layout}", b.dmd_steps, generator_ckpt=_last(cd), data_path=data / "prompts.txt",
                **common))
            if layout == "framewise":  # CF++'s 1- and 2-step framewise students (block 0 in 4 steps)
                for n in (1, 2):
                    few = self.stage(f"cfpp_dmd_framewise_{n}step", lambda f, n=n: self.train(
                        f, f"cf_dmd_framewise_{n}step", b.dmd_steps, generator_ckpt=_last(cd),
                        data_path=data / "prompts.txt", **common))
                    models[f"Causal Forcing++ DMD (framewise, {n}-step)"] = (f"cf_dmd_framewise_{n}step",
                                                                            teacher_folder, _last(few))
            models.update({
                f"AR diffusion ({layout}, 50-step)": (f"ar_diffusion_{layout}", teacher_folder, _last(ar)),
                f"Causal Forcing DMD ({layout}, long rollout x{b.long_rollout})": (f"cf_dmd_{layout}", teacher_folder,
                                                                                 _last(cf_long)),
                f"Causal Forcing++ CD init ({layout})": (f"cf_cd_{layout}", teacher_folder, _last(cd)),
                f"Causal Forcing++ DMD ({layout})": (f"cf_dmd_{layout}", teacher_folder, _last(cfpp_dmd)),
                f"CausVid ODE init ({layout})": (f"ode_{layout}", teacher_folder, _last(ode)),
                f"CausVid DMD ({layout})": (f"causvid_dmd_{layout}", teacher_folder, _last(dmd)),
                f"Causal Forcing ODE init ({layout})": (f"ode_{layout}", teacher_folder, _last(cf_ode)),
                f"Causal Forcing DMD ({layout})": (f"cf_dmd_{layout}", teacher_folder, _last(cf_dmd)),
                f"Causal Forcing DMD ({layout}, detached cache gradient)": (f"cf_dmd_{layout}", teacher_folder,
                                                                            _last(cf_detached)),
            })
        from causvid.toy.evaluate import evaluate_models, write_report
        # the DMD students with and without long-rollout training, also with every KV-window sink choice
        sinks = [f"Causal Forcing DMD ({layout}{long})" for layout in LAYOUTS
                 for long in ("", f", long rollout x{b.long_rollout}")]
        # streaming (switching, V2V): the shipped student and its long-rollout twin
        streams = [f"Causal Forcing DMD (chunkwise{long})" for long in ("", f", long rollout x{b.long_rollout}")]
        self.stage("evaluate", lambda f: evaluate_models(f, models, self.budget, self.seed, sink_choices=sinks,
                                                         streams=streams))
        write_report(self.out, self.times, b.drift_factor)
        if release is not None:
            self.release(release)
        return self.out / "report.md"

    def make_data(self, folder):
        """Render videos, encode them into the toy latent space, write the latent LMDB and the prompt file."""
        from causvid.pipelines.text_to_video import load_vae
        vae = load_vae(self.out / "base")
        specs = world.sample_specs(self.budget.videos, seed=self.seed, start=START)
        with LatentLMDBWriter(folder / "latents", unique_prompts=False) as writer:
            for i in range(0, len(specs), 256):
                chunk = specs[i:i + 256]
                latents = vae.encode(world.render_batch(chunk, world.DEFAULT_NUM_FRAMES))
                for spec, latent in zip(chunk, latents):
                    writer.append(latent[None], world.caption(spec))
        captions = sorted({world.caption(s) for s in specs})
        (folder / "prompts.txt").write_text("\n".join(captions) + "\n")

    def _teacher(self, folder):
        from causvid.pipelines.text_to_video import load_dit, load_text_encoder
        dit = load_dit(folder).eval().requires_grad_(False)
        return dit, load_text_encoder(folder, dit.config.text_len)

    def make_ode_pairs(self, folder, teacher_folder):
        """The bidirectional teacher's ODE pairs (CausVid / Self-Forcing): Euler with CFG, states kept at the
        student's step levels plus the endpoint, batched over prompts."""
        cfg = load_config(CONFIGS / "ode_chunkwise.yaml")
        teacher_cfg = load_config(CONFIGS / "teacher.yaml")
        dit, encoder = self._teacher(teacher_folder)
        sigmas, indices = schedule(cfg, self.budget.ode_euler_steps)
        captions = [world.caption(s) for s in world.sample_specs(self.budget.ode_prompts, seed=self.seed + 1)]
        negative = encoder.encode([teacher_cfg.negative_prompt])
        shape = list(cfg.image_or_video_shape)[1:]
        with LatentLMDBWriter(folder / "lmdb", unique_prompts=False) as writer, torch.no_grad():
            for i in range(0, len(captions), 64):
                batch = captions[i:i + 64]
                states = ode_pairs(dit, batch_noise(self.seed, range(i, i + len(batch)), shape),
                                   encoder.encode(batch), sigmas=sigmas, indices=indices, negative_context=negative,
                                   guidance_scale=teacher_cfg.guidance_scale)
                for caption, row in zip(batch, states):
                    writer.append(row, caption)

    def make_causal_ode_data(self, folder, teacher_folder, ar_checkpoint, block, latents):
        """Causal Forcing's causal ODE data: the AR-diffusion model's Euler run with the real latent as
        teacher-forcing context (KV-cached blockwise path), 6 slots per row."""
        from causvid.data.datasets import LatentLMDBDataset
        from causvid.pipelines.text_to_video import load_dit, load_text_encoder
        cfg = load_config(CONFIGS / "ode_chunkwise.yaml")
        teacher_cfg = load_config(CONFIGS / "teacher.yaml")
        dit = load_dit(teacher_folder, ar_checkpoint).eval().requires_grad_(False)
        encoder = load_text_encoder(teacher_folder, dit.config.text_len)
        sigmas, indices = schedule(cfg, self.budget.ode_euler_steps)
        data = LatentLMDBDataset(latents)
        rows = [data[i] for i in range(min(self.budget.ode_prompts, len(data)))]
        negative = encoder.encode([teacher_cfg.negative_prompt])
        with LatentLMDBWriter(folder / "lmdb", unique_prompts=False) as writer, torch.no_grad():
            for i in range(0, len(rows), 64):
                batch = rows[i:i + 64]
                clean = torch.stack([r["clean_latent"] for r in batch])
                context = encoder.encode([r["prompts"] for r in batch])
                noise = batch_noise(self.seed, range(i, i + len(batch)), clean.shape[1:])
                slots = causal_ode_slots(dit, noise, clean, context, num_frame_per_block=block, sigmas=sigmas,
                                         indices=indices, negative_context=negative,
                                         guidance_scale=teacher_cfg.guidance_scale, mode="blockwise_kv")
                for r, row in zip(batch, slots):
                    writer.append(row, r["prompts"])


def _last(stage_folder):
    """The final checkpoint of a training stage."""
    found = sorted((stage_folder / "run").glob("checkpoint_model_*/model.pt"))
    if not found:
        raise FileNotFoundError(f"{stage_folder}: no checkpoint (did the stage finish?)")
    return found[-1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Run the whole method in the toy world (CPU, minutes).")
    p.add_argument("--out", default="runs/toy")
    p.add_argument("--quick", action="store_true", help="a few steps per stage: checks the plumbing, not quality")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--release", help="write the shipped student (checkpoints/toy) into this folder")
    for f in fields(Budget):
        p.add_argument(f"--{f.name}", type=int, help=f"override the budget's {f.name}")
    args = p.parse_args(argv)
    budget = Budget.quick() if args.quick else Budget()
    for f in fields(Budget):
        if getattr(args, f.name) is not None:
            setattr(budget, f.name, getattr(args, f.name))
    report = ToyPipeline(args.out, budget, seed=args.seed).run(release=args.release)
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
