"""Command-line entry points (``labelfactory <command>``): thin wrappers over the library."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger("labelfactory")


def _model_flags(args) -> dict | None:
    """The guided-diffusion flags JSON that --model-flags names (None without)."""
    import json

    return json.loads(Path(args.model_flags).read_text()) if args.model_flags else None


def _load_backend(args):
    """The generator a render-like command names; a guided-diffusion state dict with its --model-flags,
    a Stable Diffusion folder with its --prompts."""
    from labelfactory.core.runtime import resolve_device
    from labelfactory.generators.loading import load_generator
    from labelfactory.generators.view import set_class_prompts

    backend = load_generator(args.checkpoint, resolve_device(args.device), fmt=args.format,
                             model_flags=_model_flags(args))
    set_class_prompts(backend, args.prompts, args.guidance_scale, "--prompts")
    return backend


def _is_diffusion(backend) -> bool:
    """Diffusion backends take images to features (x_T to samples) instead of latents to both."""
    return hasattr(backend, "image_features")


def _load_inputs(args, backend):
    """The latents ``[N, *latent_shape]`` and classes (or None) a GAN's render-like command names."""
    from labelfactory.generators.view import set_average_latent, set_truncation_cutoff

    if not args.latents:
        raise ValueError("--latents is required")
    z = np.load(args.latents)
    if z.ndim == len(backend.latent_shape):
        z = z[None]
    classes = np.load(args.classes) if args.classes else None
    if backend.arch == "biggan" and args.truncation != 1.0:
        log.warning("BigGAN renders z as given: truncation applies when sampling (labelfactory latents "
                    "--truncation), so --truncation %g is ignored", args.truncation)
    if args.average_latent:
        set_average_latent(backend, args.average_latent, "--average-latent")
    set_truncation_cutoff(backend, args.truncation_cutoff, "--truncation-cutoff")
    return z, classes


def _refuse_gan_options(args, *names: str) -> None:
    """One line naming the GAN-only options given to a diffusion model's command."""
    given = [f"--{n.replace('_', '-')}" for n in ("average_latent", "truncation_cutoff", *names) if getattr(args, n)]
    if given:
        raise ValueError(f"{', '.join(given)}: not for diffusion models")


def _diffusion_render(backend, args) -> np.ndarray:
    """Samples of a diffusion backend from the x_T ``[N, 3, H, W]`` in --latents, with the sampler named."""
    _refuse_gan_options(args)
    if not args.latents:
        raise ValueError("--latents (the initial noise x_T, [N, 3, H, W]) is required")
    steps = args.sampling_steps
    steps = int(steps) if steps and steps.isdigit() else steps  # a count K, else a timestep_respacing
    backend.set_sampling(args.sampler or backend.sampler, steps or backend.sampling_steps, args.eta)
    z = np.load(args.latents)
    classes = np.load(args.classes) if args.classes else None
    return backend.render(z[None] if z.ndim == 3 else z, classes, truncation=args.truncation, noise=args.noise,
                          batch_size=args.batch_size, noise_seed=args.noise_seed)


def _diffusion_features(backend, args) -> dict[str, np.ndarray]:
    """ddpm-segmentation's taps of the images in --images noised by --image-noise, per (step, block)."""
    import torch

    _refuse_gan_options(args, "latents", "layers")
    missing = [name for name, v in (("--images", args.images), ("--image-noise", args.image_noise),
                                    ("--steps", args.steps), ("--blocks", args.blocks)) if not v]
    if missing:
        raise ValueError(f"diffusion features need {', '.join(missing)}")
    images, noise = np.load(args.images).astype(np.float32), np.load(args.image_noise).astype(np.float32)
    if images.ndim != 4 or len(images) == 0 or len(noise) not in (1, len(images)):
        raise ValueError(f"--images must be [N, 3, H, W] (N >= 1) and --image-noise [N or 1, 3, H, W], got "
                         f"{list(images.shape)} and {list(noise.shape)}")
    classes = backend.check_classes(np.load(args.classes) if args.classes else None, len(images))
    out: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(images), args.batch_size):
        part = slice(i, i + args.batch_size)
        y = None if backend.num_classes == 0 else torch.from_numpy(classes[part]).to(backend.device)
        with torch.no_grad():
            taps = backend.image_features(torch.from_numpy(images[part]).to(backend.device),
                                          torch.from_numpy(noise if len(noise) == 1 else noise[part]).to(backend.device),
                                          y, args.steps, args.blocks)
        for name, v in taps.items():
            out.setdefault(name, []).append(v.float().cpu().numpy())
    return {name: np.concatenate(v) for name, v in out.items()}


def _render(args) -> None:
    from PIL import Image

    from labelfactory.generators.base import images_to_uint8
    from labelfactory.core.io import atomic_path

    backend = _load_backend(args)
    if _is_diffusion(backend):
        images = _diffusion_render(backend, args)
    else:
        z, classes = _load_inputs(args, backend)
        images = backend.render(z, classes, truncation=args.truncation, noise=args.noise,
                                batch_size=args.batch_size, noise_seed=args.noise_seed)
    with atomic_path(args.out) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, images.astype(np.float32))
    if args.png_dir:
        import torch

        out = Path(args.png_dir)
        out.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images_to_uint8(torch.from_numpy(images))):
            Image.fromarray(img).save(out / f"{i:06d}.png")
    log.info("rendered %d images %s with generator %s", len(images), list(images.shape[1:]),
             backend.generator_hash[:12])


def _features(args) -> None:
    from labelfactory.core.io import atomic_path

    backend = _load_backend(args)
    if _is_diffusion(backend):
        feats = _diffusion_features(backend, args)
    else:
        z, classes = _load_inputs(args, backend)
        layers = args.layers.split(",") if args.layers else None
        feats = backend.render_features(z, classes, truncation=args.truncation, layers=layers, noise=args.noise,
                                        batch_size=args.batch_size, noise_seed=args.noise_seed)
    with atomic_path(args.out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **feats)
    log.info("wrote %d feature maps of %d samples (%s) with generator %s", len(feats), len(next(iter(feats.values()))),
             ", ".join(f"{k} {list(v.shape[1:])}" for k, v in feats.items()), backend.generator_hash[:12])


def _latents(args) -> None:
    from labelfactory.config import parse_range
    from labelfactory.generators.loading import load_generator

    backend = load_generator(args.checkpoint, fmt=args.format, model_flags=_model_flags(args))
    seeds = parse_range(args.seeds)
    classes = None if args.cls is None else [args.cls] * len(seeds)
    sampling = {k: v for k, v in (("temperature", args.temperature), ("top_k", args.top_k), ("top_p", args.top_p))
                if v is not None}
    np.save(args.out, backend.draw_latents(seeds, classes, args.truncation, sampling))


def _encode(args) -> None:
    from labelfactory.generators.loading import load_generator
    from labelfactory.core.io import atomic_path
    from labelfactory.core.runtime import resolve_device

    backend = load_generator(args.checkpoint, resolve_device(args.device), fmt=args.format)
    if not hasattr(backend, "encode"):
        raise ValueError(f"{backend.arch} generator has no encoder (only VQGAN encodes images)")
    codes = backend.encode(np.load(args.images), batch_size=args.batch_size)
    with atomic_path(args.out) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, codes)
    log.info("encoded %d images to code grids %s with generator %s", len(codes), list(codes.shape[1:]),
             backend.generator_hash[:12])


def _label(args) -> None:
    from labelfactory.config import parse_range
    from labelfactory.core.runtime import resolve_device
    from labelfactory.generators.loading import load_generator
    from labelfactory.generators.view import set_average_latent
    from labelfactory.interpreters import load_interpreter
    from labelfactory.synthesis.labelling import label_seeds
    from labelfactory.synthesis.shards import ShardSettings

    device = resolve_device(args.device)
    backend = load_generator(args.checkpoint, device, fmt=args.format)
    if args.average_latent:
        set_average_latent(backend, args.average_latent, "--average-latent")
    interpreter = load_interpreter(args.interpreter_type, args.interpreter, device, args.precision)
    settings = ShardSettings(truncation=args.truncation, noise=args.noise, batch_size=args.batch_size)
    info = label_seeds(backend, interpreter, parse_range(args.seeds), args.cls, settings, args.out, args.png_dir)
    log.info("labelled %d samples into %s%s", info.num_samples, args.out,
             f" (PNGs in {args.png_dir})" if args.png_dir else "")


def _convert(args) -> None:
    import yaml

    from labelfactory.generators.loading import convert_checkpoint

    generator = yaml.safe_load(Path(args.generator).read_text()) if args.generator else None
    meta = convert_checkpoint(args.src, args.dest, fmt=args.format, generator=generator,
                              model_flags=_model_flags(args), source_url=str(args.src))
    log.info("wrote %s (%s, generator %s)", args.dest, meta["arch"], meta["generator_hash"][:12])


def _probe_taps(args) -> None:
    from labelfactory.annotations.annotation_set import load_annotation_set
    from labelfactory.core.io import atomic_path
    from labelfactory.core.runtime import resolve_device
    from labelfactory.features import FeatureStore
    from labelfactory.interpreters.base import TrainingData
    from labelfactory.interpreters.mlp import MLPEnsembleConfig
    from labelfactory.interpreters.validation import PROBE_EPOCHS, rank_taps

    data = TrainingData.from_annotations(FeatureStore.open(args.features), load_annotation_set(args.annotations))
    cfg = MLPEnsembleConfig(num_members=1, max_epochs=PROBE_EPOCHS if args.max_epochs is None else args.max_epochs,
                            extra_inputs=args.extra_inputs)
    table = rank_taps(data, cfg, folds=args.folds, device=resolve_device(args.device))
    print(table.to_markdown(index=False, floatfmt=".3f"))
    prior = table.attrs.get("average_mask_miou")
    if prior is not None:
        print(f"\naverage mask (position alone): mIoU {prior:.3f}; held out over {table.attrs['folds']} folds of "
              f"{len(data.masks)} annotated images, one MLP member, at most {cfg.max_epochs} epochs"
              + (f", extra inputs {', '.join(cfg.extra_inputs)} with every tap" if cfg.extra_inputs else ""))
    if args.out:
        with atomic_path(args.out) as tmp:
            table.to_csv(tmp, index=False)
        log.info("wrote %s", args.out)


def _annotate_push(args) -> None:
    from labelfactory.annotations.label_studio import (
        LabelStudio,
        interpreter_predictions,
        model_version,
        push,
    )
    from labelfactory.annotations.labels import load_labels

    if args.interpreter and not args.checkpoint:
        raise ValueError("--interpreter needs --checkpoint: the generator that renders the samples it labels")
    labels = load_labels(args.labels)
    predictions, version = None, "labelfactory"
    if args.interpreter:
        from labelfactory.core.runtime import resolve_device
        from labelfactory.generators.loading import load_generator
        from labelfactory.interpreters import load_interpreter

        device = resolve_device(args.device)
        backend = load_generator(args.checkpoint, device, fmt=args.format)
        interpreter = load_interpreter(args.interpreter_type, args.interpreter, device)
        predictions = interpreter_predictions(backend, interpreter, args.samples, args.batch_size)
        version = model_version(args.interpreter)
    done = push(LabelStudio(args.url), args.samples, labels, args.project, predictions, version, masks=args.masks)
    print(f"project {done['project']}: {done['created']} new tasks ({done['predictions']} with pre-annotations), "
          f"{done['skipped']} already there")


def _annotate_pull(args) -> None:
    from labelfactory.annotations.label_studio import LabelStudio, pull
    from labelfactory.annotations.labels import load_labels

    backend = None
    if args.checkpoint:
        from labelfactory.core.runtime import resolve_device
        from labelfactory.generators.loading import load_generator

        backend = load_generator(args.checkpoint, resolve_device(args.device), fmt=args.format)
    manifest = pull(LabelStudio(args.url), args.project, args.out, load_labels(args.labels), backend,
                    masks=args.masks)
    print(f"wrote {len(manifest)} annotated samples to {args.out}")


def _export(args) -> None:
    from labelfactory.downstream import coco_export  # noqa: F401  (registers the coco format)
    from labelfactory.synthesis.export import ExportOptions, export_task

    names = dict(pair.split("=", 1) for pair in args.class_names) if args.class_names else None
    options = ExportOptions(include_dropped=args.include_dropped, ignore_uncertain=args.ignore_uncertain,
                            piece_size=args.piece_size, image_format=args.image_format,
                            class_names={int(k): v for k, v in names.items()} if names else None)
    summary = export_task(args.task_dir, args.format, args.out, options, replace=args.replace)
    state = "already up to date" if summary["up_to_date"] else "exported"
    print(f"{state}: {summary['samples']} samples as {args.format} in {args.out} ({summary['files']} files, "
          "checksums in SHA256SUMS)")


def _toyworld_sheet(args) -> None:
    from labelfactory.toybench.world import sample_sheet

    sample_sheet(args.out, size=args.size, per_class=args.per_class, seed0=args.seed)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labelfactory", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def rendering(name: str, help: str, out: str) -> argparse.ArgumentParser:
        r = sub.add_parser(name, help=help)
        r.add_argument("--checkpoint", required=True,
                       help="canonical .safetensors, rosinality .pt, NVIDIA .pkl, BigGAN-PyTorch .pth, "
                            "a taming-transformers release folder / .ckpt, a guided-diffusion .pt (with "
                            "--model-flags), a diffusers UNet2DModel pipeline folder or a Stable Diffusion folder "
                            "(with --prompts)")
        r.add_argument("--model-flags", metavar="FLAGS.json",
                       help="guided-diffusion: JSON of the checkpoint's create_model_and_diffusion flags")
        r.add_argument("--prompts", nargs="+", metavar="TEXT",
                       help="Stable Diffusion: the text prompt of each class id (class 0 first)")
        r.add_argument("--guidance-scale", type=float,
                       help="Stable Diffusion: classifier-free guidance scale (default: the pipeline's 7.5)")
        r.add_argument("--latents",
                       help=".npy with z [N, z_dim] (or one [z_dim]); VQGAN: int64 codes [N, h, w] (or one [h, w]); "
                            "diffusion models: the initial noise x_T [N, 3, H, W] (render)")
        r.add_argument("--out", required=True, help=out)
        r.add_argument("--truncation", type=float, default=1.0,
                       help="StyleGAN2: psi, towards the checkpoint's average latent (BigGAN truncates z "
                            "when sampling it: see `latents --truncation`)")
        r.add_argument("--noise", choices=["const", "random", "none"], default="const",
                       help="const: the checkpoint's stored noise (StyleGAN1 files store none: use none or random)")
        r.add_argument("--average-latent",
                       help="StyleGAN1 (DatasetGAN's .for_g_all.pt): the release's avg_latent_stylegan1.npy, "
                            "the truncation centre that --truncation < 1 needs")
        r.add_argument("--truncation-cutoff", type=int, metavar="LAYERS",
                       help="StyleGAN1 (DatasetGAN's .for_g_all.pt): truncate the layers below this one "
                            "(default: 8 from 512 px up, else 7, as the release's car/face and cat/bedroom)")
        r.add_argument("--noise-seed", type=int, default=0, help="seed of the noise when --noise random")
        r.add_argument("--classes", help=".npy with one class per latent (class-conditional generators)")
        r.add_argument("--format", default="auto", help="checkpoint format (default: detect)")
        r.add_argument("--device", default="auto")
        r.add_argument("--batch-size", type=int, default=16)
        return r

    r = rendering("render", "render images from a checkpoint and latents",
                  ".npy for the raw float32 output [N,3,H,W]")
    r.add_argument("--png-dir", help="also write PNGs here")
    r.add_argument("--sampler", choices=["ddpm", "ddim"],
                   help="diffusion models: ancestral sampling (diffusers: the folder's scheduler) or DDIM "
                        "(default: guided-diffusion's timestep_respacing flag decides; diffusers: ddpm)")
    r.add_argument("--sampling-steps", metavar="K",
                   help="diffusion models: a count K of retained steps (ddim: guided-diffusion's ddimK stride when "
                        "one gives K, else evenly spaced), or a guided-diffusion timestep_respacing (ddim25, 10,20)")
    r.add_argument("--eta", type=float, default=0.0, help="diffusion models: DDIM's eta")
    r.set_defaults(func=_render)

    f = rendering("features", "write the generator's feature maps for latents",
                  ".npz with one float32 [N,C,h,w] array per layer, named by layer, in generator order")
    f.add_argument("--layers", help="comma-separated layer names (default: every tapped layer)")
    f.add_argument("--images", help="diffusion models: .npy with float32 images [N, 3, H, W] in [-1, 1]")
    f.add_argument("--image-noise", help="diffusion models: .npy with the noise [N or 1, 3, H, W] that makes "
                                         "each x_t (the same at every step; Stable Diffusion: [N or 1, 4, H/8, "
                                         "W/8], the VAE latents' shape)")
    f.add_argument("--steps", type=int, nargs="+", metavar="T", help="diffusion models: the noise steps")
    f.add_argument("--blocks", nargs="+", metavar="B",
                   help="diffusion models: decoder blocks, in the output's order per step: guided-diffusion "
                        "output-block indices (5 6 7 8 12), diffusers module names (mid_block up_blocks.0)")
    f.set_defaults(func=_features)

    l = sub.add_parser("latents", help="write the latents of seeds (e.g. 0-15 or 3,7,9) to .npy: z, or VQGAN "
                                       "code grids drawn by its prior")
    l.add_argument("--checkpoint", required=True)
    l.add_argument("--seeds", required=True)
    l.add_argument("--out", required=True)
    l.add_argument("--class", dest="cls", type=int, help="the class of every sample (class-conditional VQGAN priors)")
    l.add_argument("--truncation", type=float, default=1.0,
                   help="BigGAN: z = truncation * truncnorm(-2, 2); StyleGAN2 ignores it (psi is applied at render)")
    for name, kind in (("temperature", float), ("top-k", int), ("top-p", float)):
        l.add_argument(f"--{name}", type=kind, help="VQGAN prior sampling (default: the release's sample_fast.py)")
    l.add_argument("--format", default="auto")
    l.add_argument("--model-flags", metavar="FLAGS.json",
                   help="guided-diffusion: JSON of the state dict's create_model_and_diffusion flags (x_T per seed)")
    l.set_defaults(func=_latents)

    e = sub.add_parser("encode", help="encode images to VQGAN code grids")
    e.add_argument("--checkpoint", required=True, help="a taming-transformers release folder or .ckpt (or canonical)")
    e.add_argument("--images", required=True, help=".npy with float32 images [N,3,H,W] in [-1, 1]")
    e.add_argument("--out", required=True, help=".npy for the int64 codes [N, h, w]")
    e.add_argument("--format", default="auto", help="checkpoint format (default: detect)")
    e.add_argument("--device", default="auto")
    e.add_argument("--batch-size", type=int, default=16)
    e.set_defaults(func=_encode)

    b = sub.add_parser("label", help="label chosen seeds with a trained interpreter: images, labels and per-pixel "
                                     "uncertainty (a shard, as the synthesize rule writes), optionally as PNGs")
    b.add_argument("--checkpoint", required=True, help="the task's generator (any supported checkpoint)")
    b.add_argument("--interpreter", required=True, help="the trained interpreter (.safetensors beside its .json)")
    b.add_argument("--interpreter-type", help="mlp, conv, ... (default: what the interpreter's sidecar says)")
    b.add_argument("--seeds", required=True, help="e.g. 0-15 or 3,7,9")
    b.add_argument("--class", dest="cls", type=int, help="the class of every sample (class-conditional generators)")
    b.add_argument("--out", required=True, help="the shard (.h5) to write")
    b.add_argument("--png-dir", help="also write <id>.image.png, <id>.png (label ids) and <id>.uncertainty.png")
    b.add_argument("--truncation", type=float, default=1.0, help="as the task's truncation")
    b.add_argument("--noise", choices=["const", "random", "none"], default="const", help="as the task's noise")
    b.add_argument("--average-latent", help="StyleGAN1: the release's avg_latent_stylegan1.npy")
    b.add_argument("--precision", choices=["float32", "bfloat16", "float16"], default="float32")
    b.add_argument("--format", default="auto", help="checkpoint format (default: detect)")
    b.add_argument("--device", default="auto")
    b.add_argument("--batch-size", type=int, default=16)
    b.set_defaults(func=_label)

    c = sub.add_parser("convert", help="convert a public checkpoint to safetensors + JSON sidecar")
    c.add_argument("src")
    c.add_argument("dest")
    c.add_argument("--format", default="auto")
    c.add_argument("--generator", help="YAML spec of a user's nn.Module class whose state dict src is "
                                       "(the keys of a config's checkpoints.<name>.generator)")
    c.add_argument("--model-flags", metavar="FLAGS.json",
                   help="guided-diffusion: JSON of the state dict's create_model_and_diffusion flags")
    c.set_defaults(func=_convert)

    q = sub.add_parser("probe-taps", help="rank the feature taps by the held-out mIoU of a small MLP interpreter "
                                          "trained on each alone (and on all together), to choose features.layers")
    q.add_argument("--features", required=True, help="the task's features (results/<task>/features.h5)")
    q.add_argument("--annotations", required=True, help="the task's annotations (results/<task>/annotations.h5)")
    q.add_argument("--folds", type=int, default=4, help="folds of annotated images (at most one per image)")
    q.add_argument("--max-epochs", type=int, help="epochs per fold and tap (default: a short schedule)")
    q.add_argument("--extra-inputs", nargs="*", default=[], metavar="INPUT",
                   help="per-pixel inputs (rgb, coords) added to every tap, as interpreter.extra_inputs")
    q.add_argument("--out", help="also write the table to this CSV")
    q.add_argument("--device", default="auto")
    q.set_defaults(func=_probe_taps)

    a = sub.add_parser("annotate", help="annotate in Label Studio: push samples (with pre-annotations), pull masks "
                                        "(server: --url or $LABEL_STUDIO_URL, key: $LABEL_STUDIO_API_KEY)")
    tool = a.add_subparsers(dest="action", required=True)
    ap = tool.add_parser("push", help="upload a sample_for_annotation folder as tasks of a brush-label project")
    ap.add_argument("--samples", required=True, help="the hand-out folder (results/<task>/for_annotation)")
    ap.add_argument("--interpreter", help="attach this interpreter's labels as pre-annotations (needs --checkpoint)")
    ap.add_argument("--interpreter-type", help="mlp, conv, ... (default: what the interpreter's sidecar says)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.set_defaults(func=_annotate_push)
    al = tool.add_parser("pull", help="write the project's finished annotations as a checked annotation folder")
    al.add_argument("--out", required=True, help="the annotation folder to write (new or empty)")
    al.set_defaults(func=_annotate_pull)
    for cmd in (ap, al):
        cmd.add_argument("--project", required=True, help="the Label Studio project's title")
        cmd.add_argument("--labels", required=True, help="the task's labels.yaml")
        cmd.add_argument("--checkpoint", help="the task's generator (push: to run --interpreter; pull: check the "
                                              "annotated images against their seeds' re-renders)")
        cmd.add_argument("--url", help="the Label Studio server (default: $LABEL_STUDIO_URL)")
        cmd.add_argument("--no-masks", dest="masks", action="store_false",
                         help="keypoint-only (annotation.masks: false): keypoints of labels.yaml, no brushes or masks")
        cmd.add_argument("--format", default="auto", help="checkpoint format (default: detect)")
        cmd.add_argument("--device", default="auto")

    x = sub.add_parser("export", help="export a task's synthetic set (kept samples) as WebDataset tars, a Hugging "
                                      "Face dataset, VOC folders or COCO JSON; resumable, with SHA256SUMS")
    x.add_argument("--task-dir", required=True, help="the task's results folder (results/<task>)")
    x.add_argument("--format", required=True, choices=["webdataset", "hf", "voc", "coco"])
    x.add_argument("--out", required=True, help="the export's folder (an interrupted export there resumes)")
    x.add_argument("--include-dropped", action="store_true", help="also the samples the filter dropped (marked)")
    x.add_argument("--ignore-uncertain", type=float, default=0.0, metavar="Q",
                   help="label the most uncertain fraction Q of each sample's pixels 255 (default 0: none)")
    x.add_argument("--piece-size", type=int, default=1000, help="samples per tar / Parquet file / piece")
    x.add_argument("--image-format", choices=["jpg", "png"], default="jpg", help="VOC images (png: lossless)")
    x.add_argument("--class-names", nargs="+", metavar="ID=NAME", help="names of a class-conditional task's classes")
    x.add_argument("--replace", action="store_true", help="delete an export of other settings found in --out")
    x.set_defaults(func=_export)

    t = sub.add_parser("toyworld-sheet", help="write a PNG sample sheet of the toy world")
    t.add_argument("--out", required=True)
    t.add_argument("--size", type=int, default=64)
    t.add_argument("--per-class", type=int, default=8)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_toyworld_sheet)
    return p


def main(argv: list[str] | None = None) -> int:
    from labelfactory.core.runtime import setup_logging

    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
