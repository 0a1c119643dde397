"""Per-GPU memory of the shipped large-teacher configs at their real sizes, without their weights.

Writes config-only pipeline directories (model_index.json and each component's config, no
weights) for the published architectures, then runs the estimate ``onestep distill --dry-run``
prints (``onestep.train.memory``) for each shipped config at 1 and 8 processes, unsharded and
FSDP. The architectures' parameter counts are printed beside the published ones as a check.

    python eval/memory_estimate.py [--processes 1 8] [--configs dit-xl-2-256 sd3-medium ...] [--lora-rank 64]

It ends with a summary table: full fine-tuning on 1 GPU and FSDP over N, against LoRA adapters
(``generator.lora`` / ``fake_score.lora`` at ``--lora-rank``) on 1 GPU and data parallel over N.

The component configs are the published ``config.json`` values of the hub repositories named
in each shipped config (the keys that change parameter counts or activation shapes; the rest
are diffusers' defaults).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
          "projection_dim": 768, "vocab_size": 49408, "max_position_embeddings": 77, "hidden_act": "quick_gelu"}
CLIP_G = {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32,
          "projection_dim": 1280, "vocab_size": 49408, "max_position_embeddings": 77, "hidden_act": "gelu"}
T5_XXL = {"d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24, "vocab_size": 32128,
          "feed_forward_proj": "gated-gelu", "is_encoder_decoder": False}
VAE_4 = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [128, 256, 512, 512],
         "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
         "layers_per_block": 2, "sample_size": 256}
VAE_16 = {**VAE_4, "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False, "sample_size": 1024}
VP_LINEAR = ["DDIMScheduler", {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                               "num_train_timesteps": 1000}]
VP_SCALED = ["EulerDiscreteScheduler", {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                                        "num_train_timesteps": 1000}]

PIPELINES = {
    "cifar10-ddpm-sid": {  # google/ddpm-cifar10-32
        "published": "35.7M (DDPM CIFAR-10)",
        "unet": ["UNet2DModel", {
            "sample_size": 32, "in_channels": 3, "out_channels": 3, "layers_per_block": 2,
            "block_out_channels": [128, 256, 256, 256],
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]}],
        "scheduler": ["DDPMScheduler", {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}],
    },
    "sd15-dmd": {  # stable-diffusion-v1-5/stable-diffusion-v1-5
        "published": "860M (SD 1.5 UNet)",
        "unet": ["UNet2DConditionModel", {
            "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
            "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768, "attention_head_dim": 8,
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}],
        "vae": ["AutoencoderKL", {**VAE_4, "sample_size": 512}], "scheduler": VP_SCALED,
        "text_encoder": ["CLIPTextModel", CLIP_L],
    },
    "dit-xl-2-256": {  # facebook/DiT-XL-2-256
        "published": "675M (DiT paper, XL/2)",
        "transformer": ["DiTTransformer2DModel", {
            "num_attention_heads": 16, "attention_head_dim": 72, "in_channels": 4, "out_channels": 8,
            "num_layers": 28, "sample_size": 32, "patch_size": 2, "num_embeds_ada_norm": 1000,
            "norm_type": "ada_norm_zero"}],
        "vae": ["AutoencoderKL", VAE_4], "scheduler": VP_LINEAR,
    },
    "sd3-medium": {  # stabilityai/stable-diffusion-3-medium-diffusers
        "published": "2B (SD3 Medium model card)",
        "transformer": ["SD3Transformer2DModel", {
            "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24, "attention_head_dim": 64,
            "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
            "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 192}],
        "vae": ["AutoencoderKL", VAE_16],
        "scheduler": ["FlowMatchEulerDiscreteScheduler", {"num_train_timesteps": 1000, "shift": 3.0}],
        "text_encoder": ["CLIPTextModelWithProjection", CLIP_L],
        "text_encoder_2": ["CLIPTextModelWithProjection", CLIP_G],
        "text_encoder_3": ["T5EncoderModel", T5_XXL],
    },
    "pixart-sigma": {  # PixArt-alpha/PixArt-Sigma-XL-2-1024-MS
        "published": "0.6B (PixArt-Sigma paper)",
        "transformer": ["PixArtTransformer2DModel", {
            "num_attention_heads": 16, "attention_head_dim": 72, "in_channels": 4, "out_channels": 8,
            "num_layers": 28, "cross_attention_dim": 1152, "sample_size": 128, "patch_size": 2,
            "caption_channels": 4096, "norm_type": "ada_norm_single", "interpolation_scale": 2,
            "use_additional_conditions": False}],
        "vae": ["AutoencoderKL", VAE_4], "scheduler": VP_LINEAR,
        "text_encoder": ["T5EncoderModel", T5_XXL],
    },
    "sdxl-dmd2": {  # stabilityai/stable-diffusion-xl-base-1.0
        "published": "2.6B (SDXL paper: 2.6B UNet)",
        "unet": ["UNet2DConditionModel", {
            "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
            "block_out_channels": [320, 640, 1280],
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "transformer_layers_per_block": [1, 2, 10], "cross_attention_dim": 2048, "attention_head_dim": [5, 10, 20],
            "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816}],
        "vae": ["AutoencoderKL", {**VAE_4, "sample_size": 1024}], "scheduler": VP_SCALED,
        "text_encoder": ["CLIPTextModel", CLIP_L],
        "text_encoder_2": ["CLIPTextModelWithProjection", CLIP_G],
    },
    "flux-dev": {  # black-forest-labs/FLUX.1-dev
        "published": "12B (FLUX.1-dev model card)",
        "transformer": ["FluxTransformer2DModel", {
            "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
            "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
            "guidance_embeds": True, "axes_dims_rope": [16, 56, 56]}],
        "vae": ["AutoencoderKL", {**VAE_16, "scaling_factor": 0.3611, "shift_factor": 0.1159}],
        "scheduler": ["FlowMatchEulerDiscreteScheduler", {
            "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5,
            "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}],
        "text_encoder": ["CLIPTextModel", CLIP_L],
        "text_encoder_2": ["T5EncoderModel", T5_XXL],
    },
}
TRANSFORMERS = {"CLIPTextModel", "CLIPTextModelWithProjection", "T5EncoderModel"}


def write_skeleton(root: Path, spec: dict) -> Path:
    """A pipeline directory with configs and no weights."""
    index = {"_class_name": "DiffusionPipeline"}
    for name, entry in spec.items():
        if name == "published":
            continue
        cls, config = entry
        library = "transformers" if cls in TRANSFORMERS else "diffusers"
        index[name] = [library, cls]
        folder = root / name
        folder.mkdir(parents=True)
        file = "scheduler_config.json" if name == "scheduler" else "config.json"
        extra = {"_class_name": cls} if library == "diffusers" else {"architectures": [cls]}
        if cls == "T5EncoderModel":
            extra["model_type"] = "t5"
        elif cls.startswith("CLIP"):
            extra["model_type"] = "clip_text_model"
        (folder / file).write_text(json.dumps({**extra, **config}))
    (root / "model_index.json").write_text(json.dumps(index))
    return root


def main() -> None:
    from onestep import GIB
    from onestep import config as config_mod
    from onestep import memory_estimate as estimate
    from onestep import teacher_skeleton as skeleton

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--configs", nargs="+", default=list(PIPELINES))
    parser.add_argument("--lora-rank", type=int, default=64,
                        help="rank of the generator's and fake score's LoRA adapters in the summary (0: no LoRA rows)")
    args = parser.parse_args()
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            path = write_skeleton(Path(tmp) / name, PIPELINES[name])
            summary.append(_summary_row(name, path, args.processes, args.lora_rank))
            print(f"\n== configs/{name}.yaml (teacher architecture: published {PIPELINES[name]['published']})")
            for processes in args.processes:
                shipped = config_mod.load(ROOT / "configs" / f"{name}.yaml", [f"teacher.path={path}"])
                with_lora = shipped.generator.lora.rank is not None or shipped.fake_score.lora.rank is not None
                for sharding in (["none", "fsdp"] if processes > 1 and not with_lora else ["none"]):
                    cfg = config_mod.load(ROOT / "configs" / f"{name}.yaml",
                                          [f"teacher.path={path}", f"train.sharding={sharding}"])
                    if processes == args.processes[0] and sharding == "none":
                        network, aux = skeleton(cfg)
                        n = sum(p.numel() for p in network.parameters())
                        print(f"denoiser {n / 1e9:.3f}B parameters; VAE + text encoders {aux / GIB:.2f} GiB "
                              f"in {cfg.teacher.dtype}")
                    est = estimate(cfg, processes)
                    print(f"-- {processes} process(es), sharding {sharding}: {est.total / GIB:.1f} GiB per GPU")
                    print(est.format())
    print("\n== summary: GiB per GPU (full: generator and fake score are full copies; LoRA: rank "
          f"{args.lora_rank} adapters on the teacher's one base, data parallel over several GPUs)")
    many = max(args.processes)
    print(f"| config | full, 1 GPU | full, {many} GPUs FSDP | LoRA, 1 GPU | LoRA, {many} GPUs | LoRA trained parameters |")
    print("|---|---|---|---|---|---|")
    for row in summary:
        print("| " + " | ".join(row) + " |")


def _summary_row(name: str, path: Path, processes: list[int], rank: int) -> list[str]:
    """[config, full 1 GPU, full N FSDP, LoRA 1 GPU, LoRA N GPUs, LoRA trained parameters]."""
    from onestep import GIB
    from onestep import config as config_mod
    from onestep import memory_estimate as estimate

    many = max(processes)
    base = [f"teacher.path={path}"]
    full = ["generator.lora.rank=null", "fake_score.lora.rank=null"]
    lora = [f"generator.lora.rank={rank}", f"fake_score.lora.rank={rank}"]

    def total(overrides, n):
        cfg = config_mod.load(ROOT / "configs" / f"{name}.yaml", base + overrides)
        return estimate(cfg, n)

    full1, full_n = total(full + ["train.sharding=none"], 1), total(full + ["train.sharding=fsdp"], many)
    row = [name, f"{full1.total / GIB:.1f}", f"{full_n.total / GIB:.1f}"]
    if rank <= 0:
        return row + ["", "", ""]
    lora1, lora_n = total(lora + ["train.sharding=none"], 1), total(lora + ["train.sharding=none"], many)
    trained = dict(lora1.rows)[next(k for k, _ in lora1.rows if "LoRA" in k)] / 4
    return row + [f"{lora1.total / GIB:.1f}", f"{lora_n.total / GIB:.1f}", f"{trained / 1e6:.1f}M"]


if __name__ == "__main__":
    main()
