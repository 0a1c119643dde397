"""Cost of one training iteration against its unavoidable network passes.

For each objective: times a full iteration (generator step + fake-score steps, with the
trainer's optimizers, EMA, clipping and logging) and, in the same run, each network pass
the iteration cannot avoid, alone with the same shapes: generator forward+backward, teacher
and fake-score forward (+ backward to the input when the objective's gradient flows
through them), the fake-score forward+backward of its own loss, the head's passes, and the
extra generator forwards of additional fake steps. Prints ``iteration / sum-of-passes``
(target: at most 1.10).

    python eval/bench_step.py --teacher configs/digits.yaml
    python eval/bench_step.py --teacher onestep/resources/fashion.yaml --objectives f_distill:js --gan
    python eval/bench_step.py --arch ddpm-cifar10 --batch 8            # random weights
    python eval/bench_step.py --arch ddpm-cifar10 --batch 64 --mixed-precision bf16   # on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from onestep import Trainer, build_trainer, cat_cond, frozen, to_device
from onestep import config as config_mod

OBJECTIVES = ["dmd", "sid", "sim", "diff_instruct", "f_distill:js", "uni_instruct:js"]


def build_cifar_teacher(folder: Path) -> str:
    """google/ddpm-cifar10-32's architecture (its config.json on the hub) with random weights."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                       block_out_channels=(128, 256, 256, 256), norm_eps=1e-6, freq_shift=1,
                       flip_sin_to_cos=False, downsample_padding=0,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(clip_sample=True)).save_pretrained(folder)
    return str(folder)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int, warmup: bool = True) -> float:
    if warmup:
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def passes(tr: Trainer) -> dict:
    """The unavoidable passes of one iteration, each as a closure with the trainer's shapes."""
    plan, method, shape, dev = tr.plan, tr.method, tr.teacher.sample_shape, tr.device
    b = tr.draws.local_batch
    gen, fake, disc = method.nets.plain_generator, method.nets.plain_fake_score, method.nets.plain_discriminator
    cond = tr.draws.rows(tr.teacher.sample_cond(tr.train.batch_size, torch.Generator().manual_seed(0)))
    z = torch.randn(b, *shape, device=dev)
    sigma = torch.full((b,), 1.0, device=dev)
    x_t = torch.randn(b, *shape, device=dev)
    ac = tr.acc.autocast

    # with the regression term, the generator's one call also maps the pairs' noise
    z_gen, cond_gen = z, cond
    if plan.use_regression:
        n_pair = plan.regression_batch // tr.acc.num_processes
        z_gen = torch.randn(b + n_pair, *shape, device=dev)
        pair_cond = tr.teacher.sample_cond(n_pair, torch.Generator().manual_seed(1))
        cond_gen = None if cond is None else cat_cond(cond, to_device(pair_cond, dev))

    def gen_fwd_bwd():
        with ac():
            x = gen(z_gen, cond_gen).float()
        x.square().mean().backward()

    def net_pass(net, how):
        def run():
            if how.grad:
                x = x_t.clone().requires_grad_(True)
                with frozen(fake), ac():
                    out = net(x, sigma, cond, return_features=True) if how.features else net(x, sigma, cond)
                d = out[0] if how.features else out
                d.float().square().mean().backward()
            else:
                with torch.no_grad(), ac():
                    net(x_t, sigma, cond, return_features=how.features)
        return run

    out = {
        "generator fwd+bwd" + (f" ({len(z_gen)})" if plan.use_regression else ""): gen_fwd_bwd,
        "teacher fwd" + ("+bwd(x)" if plan.teacher_call.grad else ""): net_pass(tr.teacher, plan.teacher_call),
        "fake fwd" + ("+bwd(x)" if plan.fake_call.grad else ""): net_pass(fake, plan.fake_call),
    }
    k = tr.train.fake_steps_per_gen
    critic = method.critic
    feats_from = plan.features if critic is not None else None
    if plan.use_gan and not plan.gan_at_xt:  # the GAN term's features of x_g at the discriminator's sigmas
        gan_net = tr.teacher if feats_from == "teacher" else fake

        def gan_features():
            x = x_t.clone().requires_grad_(True)
            with frozen(fake, disc), ac():  # the heads frozen too, as method.critics_frozen
                _, feats = gan_net(x, sigma, cond, return_features="only")
                logits = disc(feats)  # (a GAN term always has its discriminator)
            logits.float().square().mean().backward()
        out["GAN term: features + heads fwd+bwd(x)"] = gan_features
    # the fake score's denoising rows (and, reading its features, the discriminator's fakes and
    # reals): in one process the reals pass features-only (distill/critic.py), else one batch
    on_fake = feats_from == "fake_score"
    split = on_fake and critic.reals_apart()
    rows = 1 if not on_fake or critic.reuse_dsm else 2  # the denoising rows (and the fakes)
    fake_batch = b * (rows + int(on_fake and not split))
    xf = torch.randn(fake_batch, *shape, device=dev)
    sf = torch.full((fake_batch,), 1.0, device=dev)
    cf = cond if cond is None or not on_fake else torch.cat([cond] * (fake_batch // b))

    def fake_loss():
        with ac():
            d = fake(xf, sf, cf, return_features=on_fake)
            if split:
                _, real_feats = fake(x_t, sigma, cond, return_features="only")
            if on_fake:  # the heads read b fake rows and the b real rows, as distill/critic.py does
                logits = disc([torch.cat([f[-b:], r]) for f, r in zip(d[1], real_feats)] if split
                              else [f[-2 * b:] for f in d[1]])
        loss = (d[0] if isinstance(d, tuple) else d).float().square().mean()
        if on_fake:
            loss = loss + logits.float().square().mean()
        loss.backward()

    out[f"fake fwd+bwd x{k}" + (" (+ heads)" if on_fake else "")] = lambda: [fake_loss() for _ in range(k)]
    if k > 1:
        def extra_gen():
            with torch.no_grad(), ac():
                for _ in range(k - 1):
                    gen(z, cond)
        out[f"generator fwd x{k - 1}"] = extra_gen
    if feats_from == "teacher":  # the fake score's pass carries the features otherwise
        x2, s2 = torch.randn(2 * b, *shape, device=dev), torch.full((2 * b,), 1.0, device=dev)
        c2 = None if cond is None else torch.cat([cond, cond])

        def disc_pass():
            for _ in range(k):
                with torch.no_grad(), ac():
                    _, f = tr.teacher(x2, s2, c2, return_features=True)
                disc(f).square().mean().backward()
        out["teacher fwd + heads (discriminator)"] = disc_pass
    return out


def bench(config: config_mod.Config, label: str, repeats: int, teacher=None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tr = build_trainer(config, tmp, teacher=teacher)
        # warm-up: builds caches (teacher samples) and grows the heap to its working size
        # (the first iterations page-fault fresh memory in; later ones reuse it)
        for _ in range(2):
            tr.iteration()
        fns = passes(tr)
        for _ in range(2):
            for fn in fns.values():
                fn()
        # interleaved rounds (an iteration, then each pass once): drift in the machine's speed
        # hits both sides of the ratio alike; the medians over rounds are reported
        rounds = []
        for _ in range(repeats):
            row = {"iteration": timed(tr.iteration, tr.device, 1, warmup=False)}
            row.update({name: timed(fn, tr.device, 1, warmup=False) for name, fn in fns.items()})
            rounds.append(row)
        iteration = statistics.median(r["iteration"] for r in rounds)
        parts = {name: statistics.median(r[name] for r in rounds) for name in fns}
        ratio = statistics.median(r["iteration"] / sum(r[n] for n in fns) for r in rounds)
        for p in list(tr.generator.parameters()) + list(tr.fake_score.parameters()):
            p.grad = None
        peak = torch.cuda.max_memory_allocated() / 2**30 if tr.device.type == "cuda" else None
        return {"objective": label, "iteration": iteration, "passes": parts, "sum": sum(parts.values()),
                "ratio": ratio, "images_per_s": config.train.batch_size / iteration,
                "peak_gib": peak, "teacher": tr.teacher}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", help="a distillation config whose teacher is benchmarked")
    ap.add_argument("--arch", choices=["ddpm-cifar10"], help="a built-in architecture with random weights")
    ap.add_argument("--batch", type=int, default=None,
                    help="global batch (default: the config's train.batch_size with --teacher, 8 with --arch); "
                         "a config's regression.batch_size is scaled by the same factor")
    ap.add_argument("--objectives", default=",".join(OBJECTIVES))
    ap.add_argument("--fake-steps", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--gan", action="store_true",
                    help="keep the config's GAN term (default: off, each objective alone); its features pass "
                         "of the generator's samples is then one of the timed passes")
    args = ap.parse_args(argv)
    if not (args.teacher or args.arch):
        ap.error("give --teacher CONFIG or --arch ddpm-cifar10")

    tmp = tempfile.TemporaryDirectory()
    if args.arch:
        base = {"teacher": {"kind": "diffusers", "path": build_cifar_teacher(Path(tmp.name) / "cifar")}}
    else:
        base = config_mod.to_dict(config_mod.load(args.teacher))
    train = base.setdefault("train", {})
    batch = args.batch or train.get("batch_size") or 8
    reg = base.get("regression", {})
    if reg.get("weight", 0) > 0:
        reg["batch_size"] = max(1, round(reg["batch_size"] * batch / train["batch_size"]))
    train.update(
        steps=10**6, batch_size=batch, fake_steps_per_gen=args.fake_steps, progress=False,
        log_every=10**6, checkpoint_every=10**6, mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing)
    base["attention"] = args.attention
    base.setdefault("data", {}).update(cache_size=max(batch, 16), cache_steps=2, cache_batch=max(batch, 16))
    rows, teacher = [], None
    for item in args.objectives.split(","):
        name, _, f = item.partition(":")
        data = {**base, "objective": {"name": name, **({"f": f, "ratio_warmup": 0} if f else {})}}
        if not args.gan:
            data["gan"] = {"weight": 0.0}
        cfg = config_mod.from_dict(data)
        r = bench(cfg, item, args.repeats, teacher)
        teacher = r.pop("teacher")  # load the teacher once
        rows.append(r)
        detail = ", ".join(f"{k} {v * 1e3:.0f}ms" for k, v in r["passes"].items())
        print(f"{item:18s} iteration {r['iteration'] * 1e3:8.1f} ms  passes {r['sum'] * 1e3:8.1f} ms  "
              f"ratio {r['ratio']:.3f}  ({detail})", flush=True)
    device = "cuda " + torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()} threads"
    reg_note = f", regression pairs {reg['batch_size']}" if reg.get("weight", 0) > 0 else ""
    print(f"\n{device}, batch {batch}{reg_note}, mixed precision {args.mixed_precision}")
    print(f"{'objective':18s} {'iter/passes':>12s} {'images/s':>10s} {'peak GiB':>9s}")
    for r in rows:
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        print(f"{r['objective']:18s} {r['ratio']:12.3f} {r['images_per_s']:10.1f} {peak:>9s}")
    worst = max(r["ratio"] for r in rows)
    print(f"worst iteration / sum-of-passes: {worst:.3f} (target <= 1.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
