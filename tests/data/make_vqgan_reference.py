"""Recipe of tests/data/vqgan/ (a tiny taming-transformers class-conditional model: its
configs and weights) and tests/data/vqgan_reference.safetensors (taming's outputs for it).

Built and evaluated with taming-transformers' own code, not with labelfactory: the
CompVis/taming-transformers repository at commit 3ba01b2 (its ``taming`` package and
``main.py``), omegaconf 2.0.0 and einops as its environment pins them, and
transformers 4.3.1 (the version it pins) for ``top_k_top_p_filtering``, all outside
the project's venv:
    git archive ... taming main.py | tar -x -C /tmp/taming
    pip install --no-deps --target /tmp/tamingdeps einops omegaconf==2.0.0 transformers==4.3.1
    PYTHONPATH=/tmp/taming:/tmp/tamingdeps .venv/bin/python tests/data/make_vqgan_reference.py
(torch 2.14.1). Three imports are stood in for, none of them computing anything
used here: ``pytorch_lightning`` (``LightningModule`` = ``nn.Module``), ``main`` (only
its ``instantiate_from_config``/``get_obj_from_str``, taken from taming's ``main.py``
by ``ast`` and run as written) and ``transformers`` (only ``top_k_top_p_filtering``,
taken likewise from 4.3.1's ``generation_utils.py`` with that version's
``generation_logits_process.py`` loaded as is; the real package imports
``pkg_resources`` and much more).

The model is the Net2NetTransformer of ``vqgan/cin_transformer-project.yaml``
(first stage: the VQModel of ``vqgan/model.yaml``, ch 32, ch_mult [2, 1], one res
block, attention at 8 px, 16 px images, an 8x8 grid of 16 codes of dim 4; prior: a
2-layer minGPT, class label as the first token via ``Labelator``, 5 classes), built
with taming's ``instantiate_from_config`` on the YAML. Every float tensor is redrawn
(seed 0; unit norms 1 +- 0.2, biases, fan-in scaled weights) and rounded to
``int8 * 2**-e`` with one exponent ``e`` per tensor, so ``vqgan/weights.safetensors``
stores int8 tensors and the exponents (metadata ``exponents``, JSON) and the float32
weights are exact. Codebook row 7 is a copy of row 3, so exact ties occur.

The reference file holds, all from taming's modules in eval mode:
``encode/images`` (random in [-1, 1]), ``encode/codes`` (``VQModel.encode``'s indices,
as ``[N, h, w]``) and ``encode/reconstruction`` (``VQModel.forward``);
``decode/codes`` (random) and ``decode/images`` (``Net2NetTransformer.decode_to_img``);
``features/<layer>`` for ``decode/codes[:1]`` from forward hooks on the decoder:
``mid`` (``mid.block_2``) and ``up<i>`` (the last block or attention of ``up[i]``);
``quantize/z`` (codebook rows 3, 7, 0 and random vectors) and ``quantize/codes``
(``VectorQuantizer2``'s choice); ``prior/tokens`` (class then codes) and
``prior/logits`` (``GPT.forward``); per sampling setting ``s`` in SAMPLES (metadata
``samples``, JSON), ``sample/<s>/codes`` from ``mingpt.sample_with_past`` after
``torch.manual_seed(seed)`` on a batch of one, conditioned on ``[[class]]`` as
``scripts/sample_fast.py`` does, and ``sample/<s>/images`` decoded from them.
"""

import ast
import json
import math
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).parent
FOLDER = HERE / "vqgan"

DDCONFIG = dict(double_z=False, z_channels=8, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[2, 1],
                num_res_blocks=1, attn_resolutions=[8], dropout=0.0)
VQ_PARAMS = dict(embed_dim=4, n_embed=16, ddconfig=DDCONFIG,
                 lossconfig={"target": "taming.modules.losses.DummyLoss"})
GPT_PARAMS = dict(vocab_size=16, block_size=64, n_layer=2, n_head=4, n_embd=32)
N_CLASSES = 5
# name: (seed, class, temperature, top_k, top_p)
SAMPLES = {"plain": (0, 1, 1.0, None, None), "other_class": (0, 2, 1.0, None, None),
           "other_seed": (1, 1, 1.0, None, None), "filtered": (3, 4, 0.7, 5, 0.9),
           "release_defaults": (5, 0, 1.0, 250, 1.0)}


def _functions_from(path: Path, names: set[str], namespace: dict) -> None:
    """Run the top-level ``def``s ``names`` of an upstream file, unchanged, in ``namespace``."""
    tree = ast.parse(path.read_text())
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    assert {d.name for d in defs} == names, names
    exec(compile(ast.Module(body=defs, type_ignores=[]), str(path), "exec"), namespace)


def install_stand_ins() -> None:
    import importlib
    import importlib.util

    pl = types.ModuleType("pytorch_lightning")
    pl.LightningModule = torch.nn.Module
    sys.modules["pytorch_lightning"] = pl

    taming_root = Path(importlib.util.find_spec("taming").submodule_search_locations[0]).parent
    main = types.ModuleType("main")
    main.importlib = importlib
    _functions_from(taming_root / "main.py", {"get_obj_from_str", "instantiate_from_config"}, main.__dict__)
    sys.modules["main"] = main

    tf_root = Path(importlib.util.find_spec("transformers").submodule_search_locations[0])
    tf = types.ModuleType("transformers")
    tf.__path__ = [str(tf_root)]
    file_utils = types.ModuleType("transformers.file_utils")
    file_utils.add_start_docstrings = lambda *a: (lambda f: f)
    sys.modules.update({"transformers": tf, "transformers.file_utils": file_utils})
    spec = importlib.util.spec_from_file_location("transformers.generation_logits_process",
                                                  tf_root / "generation_logits_process.py")
    glp = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = glp
    spec.loader.exec_module(glp)
    ns = {"torch": torch, "TopKLogitsWarper": glp.TopKLogitsWarper, "TopPLogitsWarper": glp.TopPLogitsWarper}
    _functions_from(tf_root / "generation_utils.py", {"top_k_top_p_filtering"}, ns)
    tf.top_k_top_p_filtering = ns["top_k_top_p_filtering"]


def write_configs() -> None:
    import yaml

    FOLDER.mkdir(exist_ok=True)
    vq = {"target": "taming.models.vqgan.VQModel", "params": VQ_PARAMS}
    cin = {"target": "taming.models.cond_transformer.Net2NetTransformer",
           "params": {"first_stage_key": "image", "cond_stage_key": "class_label",
                      "transformer_config": {"target": "taming.modules.transformer.mingpt.GPT",
                                             "params": GPT_PARAMS},
                      "first_stage_config": vq,
                      "cond_stage_config": {"target": "taming.modules.util.Labelator",
                                            "params": {"n_classes": N_CLASSES}}}}
    (FOLDER / "model.yaml").write_text(yaml.safe_dump({"model": {"base_learning_rate": 4.5e-6, **vq}},
                                                      sort_keys=False))
    (FOLDER / "cin_transformer-project.yaml").write_text(
        yaml.safe_dump({"model": {"base_learning_rate": 4.5e-6, **cin}}, sort_keys=False))


def randomise(model: torch.nn.Module) -> dict[str, int]:
    """Redraw every float tensor and round it to int8 * 2**-e; returns the exponents."""
    g = torch.Generator().manual_seed(0)
    exponents = {}
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith(".mask"):
                exponents[name] = 0
                continue
            n = torch.randn(t.shape, generator=g)
            leaf = name.rsplit(".", 2)
            if name.endswith("weight") and any(p.startswith(("norm", "ln")) for p in leaf[-2:-1]):
                v = 1 + 0.2 * n
            elif name.endswith("bias"):
                v = 0.1 * n
            elif name.endswith("embedding.weight"):
                v = 0.6 * n
            elif name.endswith(("tok_emb.weight", "pos_emb")):
                v = 0.5 * n
            else:
                v = n / math.sqrt(max(1, t[0].numel()))
            e = 7 - math.ceil(math.log2(float(v.abs().max())))
            t.copy_(torch.clamp(torch.round(v * 2.0 ** e), -127, 127) * 2.0 ** -e)
            exponents[name] = e
        cb = model.first_stage_model.quantize.embedding.weight
        cb[7] = cb[3]
    return exponents


def make() -> dict[str, torch.Tensor]:
    from omegaconf import OmegaConf

    from main import instantiate_from_config
    from taming.modules.transformer.mingpt import sample_with_past

    write_configs()
    cfg = OmegaConf.load(FOLDER / "cin_transformer-project.yaml")
    model = instantiate_from_config(cfg.model).eval()
    exponents = randomise(model)
    sd = model.state_dict()
    save_file({k: (v * 2.0 ** exponents[k]).round().to(torch.int8) for k, v in sd.items()},
              str(FOLDER / "weights.safetensors"), metadata={"exponents": json.dumps(exponents)})

    vq_cfg = OmegaConf.load(FOLDER / "model.yaml")
    vq = instantiate_from_config(vq_cfg.model).eval()
    vq.load_state_dict({k[len("first_stage_model."):]: v for k, v in sd.items()
                        if k.startswith("first_stage_model.")}, strict=True)
    g = torch.Generator().manual_seed(1)
    out: dict[str, torch.Tensor] = {}
    grid = DDCONFIG["resolution"] // 2 ** (len(DDCONFIG["ch_mult"]) - 1)
    qzshape = [1, VQ_PARAMS["embed_dim"], grid, grid]
    with torch.no_grad():
        x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
        quant, _, info = vq.encode(x)
        out["encode/images"] = x
        out["encode/codes"] = info[2].reshape(2, grid, grid)
        out["encode/reconstruction"] = vq(x)[0]

        codes = torch.randint(0, VQ_PARAMS["n_embed"], (2, grid, grid), generator=g)
        out["decode/codes"] = codes
        out["decode/images"] = model.decode_to_img(codes.reshape(2, -1), [2, *qzshape[1:]])

        dec, feats = model.first_stage_model.decoder, {}
        taps = [("mid", dec.mid.block_2)] + [
            (f"up{i}", (dec.up[i].attn or dec.up[i].block)[-1]) for i in reversed(range(len(dec.up)))]
        hooks = [m.register_forward_hook(lambda m, i, o, n=n: feats.__setitem__(n, o)) for n, m in taps]
        model.decode_to_img(codes[:1].reshape(1, -1), qzshape)
        for h in hooks:
            h.remove()
        out.update({f"features/{k}": v.contiguous() for k, v in feats.items()})

        cb = vq.quantize.embedding.weight
        z = torch.cat([cb[[3, 7, 0]], torch.randn(5, VQ_PARAMS["embed_dim"], generator=g)])
        z = z.t().reshape(1, VQ_PARAMS["embed_dim"], 2, 4).contiguous()
        out["quantize/z"] = z
        out["quantize/codes"] = vq.quantize(z)[2][2].reshape(1, 2, 4)
        assert out["quantize/codes"].reshape(-1)[:2].tolist() == [3, 3], "tie must go to the first index"

        tokens = torch.cat([torch.tensor([[1], [4]]), torch.randint(0, 16, (2, 40), generator=g)], dim=1)
        out["prior/tokens"] = tokens
        out["prior/logits"] = model.transformer(tokens)[0]

        for name, (seed, cls, temperature, top_k, top_p) in SAMPLES.items():
            torch.manual_seed(seed)
            c = torch.tensor([[cls]])
            idx = sample_with_past(c, model.transformer, steps=grid * grid, sample_logits=True,
                                   top_k=top_k, top_p=top_p, temperature=temperature)
            out[f"sample/{name}/codes"] = idx.reshape(1, grid, grid)
            out[f"sample/{name}/images"] = model.decode_to_img(idx, qzshape)
    return out


if __name__ == "__main__":
    install_stand_ins()
    save_file(make(), str(HERE / "vqgan_reference.safetensors"), metadata={"samples": json.dumps(SAMPLES)})
