"""Format-true checkpoint files for the loader tests.

* rosinality ``stylegan2-pytorch`` ``.pt`` files (training checkpoint, converted
  ``g_ema`` + ``latent_avg``, bare state dict), written with ``torch.save``;
* NVIDIA ``stylegan2-ada-pytorch`` network pickles, written with plain
  ``pickle.dump`` from stand-ins for ``dnnlib``, ``torch_utils.persistence`` and
  ``training/networks.py`` that pickle exactly as NVIDIA's do: every module is a
  ``persistent_class`` whose record embeds the source of ``networks.py``. That
  source writes the file named by ``$EXEC_MARKER_ENV`` when it is executed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import pickle
import sys
from pathlib import Path

import torch

from labelfactory.generators.stylegan2 import Generator, StyleGAN2Config

EXEC_MARKER_ENV = "LABELFACTORY_TEST_EXEC_MARKER"


# --- rosinality ---------------------------------------------------------------------
def rosinality_generator(size=16, style_dim=16, n_mlp=2, channels=None, seed=0) -> Generator:
    """Our StyleGAN2 (rosinality's module tree) with every bias, noise strength and
    ``latent_avg`` non-trivial, so a wrongly mapped tensor changes the image."""
    torch.manual_seed(seed)
    channels = channels or {r: c for r, c in {4: 16, 8: 12, 16: 8, 32: 8}.items() if r <= size}
    g = Generator(StyleGAN2Config(size=size, style_dim=style_dim, n_mlp=n_mlp, channels=channels))
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("bias") or name.endswith("noise.weight"):
                p.add_(0.3 * torch.randn_like(p))
        g.latent_avg.normal_()
    return g.eval()


def save_rosinality(path: Path, g: Generator, layout: str = "train", channel_multiplier: int = 2) -> Path:
    """Write ``g`` as rosinality does: ``train`` (train.py's checkpoint, no
    ``latent_avg``), ``converted`` (convert_weight.py: ``g_ema`` + ``latent_avg``)
    or ``bare`` (just the ``g_ema`` state dict)."""
    sd = {k: v.clone() for k, v in g.state_dict().items() if k != "latent_avg"}
    if layout == "train":
        args = argparse.Namespace(size=g.cfg.size, latent=g.cfg.style_dim, n_mlp=g.cfg.n_mlp,
                                  channel_multiplier=channel_multiplier, r1=10.0, path_regularize=2.0,
                                  mixing=0.9, augment=False, ckpt=None, wandb=False, local_rank=0)
        obj = {"g": {k: v + 1.0 for k, v in sd.items()},  # the non-EMA weights: must not be the ones loaded
               "d": {"convs.0.0.weight": torch.randn(8, 3, 1, 1), "final_linear.1.bias": torch.zeros(1)},
               "g_ema": sd, "g_optim": {}, "d_optim": {}, "args": args, "ada_aug_p": 0.0}
    elif layout == "converted":
        obj = {"g_ema": sd, "latent_avg": g.latent_avg.clone()}
    elif layout == "bare":
        obj = sd
    else:
        raise ValueError(layout)
    torch.save(obj, path)
    return path


# --- NVIDIA stylegan2-ada-pytorch ------------------------------------------------------
DNNLIB_INIT_SRC = "from .util import EasyDict\n"

DNNLIB_UTIL_SRC = '''
class EasyDict(dict):
    """Convenience class that behaves like a dict but allows access with the attribute syntax."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name)

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        del self[name]
'''

# torch_utils/persistence.py of stylegan2-ada-pytorch, without import hooks and checks.
PERSISTENCE_SRC = '''
import copy
import inspect
import sys
import types
import uuid

import dnnlib

_version = 6
_module_to_src_dict = dict()
_src_to_module_dict = dict()


def persistent_class(orig_class):
    orig_module = sys.modules[orig_class.__module__]
    orig_module_src = _module_to_src(orig_module)

    class Decorator(orig_class):
        _orig_module_src = orig_module_src
        _orig_class_name = orig_class.__name__

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._init_args = copy.deepcopy(args)
            self._init_kwargs = copy.deepcopy(kwargs)

        def __reduce__(self):
            fields = list(super().__reduce__())
            fields += [None] * max(3 - len(fields), 0)
            if fields[0] is not _reconstruct_persistent_obj:
                meta = dict(type="class", version=_version, module_src=self._orig_module_src,
                            class_name=self._orig_class_name, state=fields[2])
                fields[0] = _reconstruct_persistent_obj
                fields[1] = (meta,)
                fields[2] = None
            return tuple(fields)

    Decorator.__name__ = orig_class.__name__
    return Decorator


def _reconstruct_persistent_obj(meta):
    meta = dnnlib.EasyDict(meta)
    meta.state = dnnlib.EasyDict(meta.state)
    assert meta.version == _version
    module = _src_to_module(meta.module_src)
    assert meta.type == "class"
    orig_class = module.__dict__[meta.class_name]
    decorator_class = persistent_class(orig_class)
    obj = decorator_class.__new__(decorator_class)
    setstate = getattr(obj, "__setstate__", None)
    if callable(setstate):
        setstate(meta.state)
    else:
        obj.__dict__.update(meta.state)
    return obj


def _module_to_src(module):
    src = _module_to_src_dict.get(module, None)
    if src is None:
        src = inspect.getsource(module)
        _module_to_src_dict[module] = src
        _src_to_module_dict[src] = module
    return src


def _src_to_module(src):
    module = _src_to_module_dict.get(src, None)
    if module is None:
        module_name = "_imported_module_" + uuid.uuid4().hex
        module = types.ModuleType(module_name)
        sys.modules[module_name] = module
        _module_to_src_dict[module] = src
        _src_to_module_dict[src] = module
        exec(src, module.__dict__)
    return module
'''

# training/networks.py of stylegan2-ada-pytorch: constructors only (names, shapes, attributes).
NETWORKS_SRC = f'''
import os

import numpy as np
import torch

import dnnlib
from torch_utils import persistence

if os.environ.get("{EXEC_MARKER_ENV}"):
    with open(os.environ["{EXEC_MARKER_ENV}"], "w") as f:
        f.write("the embedded networks.py source was executed")


def setup_filter(f):
    f = torch.as_tensor(f, dtype=torch.float32)
    f = f.ger(f)
    return f / f.sum()


@persistence.persistent_class
class FullyConnectedLayer(torch.nn.Module):
    def __init__(self, in_features, out_features, bias=True, activation="linear", lr_multiplier=1, bias_init=0):
        super().__init__()
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], np.float32(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier


@persistence.persistent_class
class Conv2dLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, bias=True, up=1, resample_filter=[1, 3, 3, 1],
                 channels_last=False):
        super().__init__()
        self.up = up
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.weight_gain = 1 / np.sqrt(in_channels * (kernel_size ** 2))
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels])) if bias else None


@persistence.persistent_class
class MappingNetwork(torch.nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, embed_features=None, activation="lrelu",
                 lr_multiplier=0.01, w_avg_beta=0.995):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers, self.w_avg_beta = num_layers, w_avg_beta
        embed_features = (w_dim if embed_features is None else embed_features) if c_dim > 0 else 0
        features_list = [z_dim + embed_features] + [w_dim] * num_layers
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features_list[idx], features_list[idx + 1], activation=activation,
                                        lr_multiplier=lr_multiplier)
            setattr(self, f"fc{{idx}}", layer)
        self.register_buffer("w_avg", torch.zeros([w_dim]))


@persistence.persistent_class
class SynthesisLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, resolution, kernel_size=3, up=1, use_noise=True,
                 activation="lrelu", resample_filter=[1, 3, 3, 1], conv_clamp=None, channels_last=False):
        super().__init__()
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = np.sqrt(2)
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))


@persistence.persistent_class
class ToRGBLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None, channels_last=False):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels * (kernel_size ** 2))


@persistence.persistent_class
class SynthesisBlock(torch.nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, is_last, architecture="skip",
                 resample_filter=[1, 3, 3, 1], conv_clamp=None, use_fp16=False, fp16_channels_last=False,
                 **layer_kwargs):
        super().__init__()
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = (use_fp16 and fp16_channels_last)
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0
        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        if in_channels != 0:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp,
                                        channels_last=self.channels_last, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, channels_last=self.channels_last, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp,
                                    channels_last=self.channels_last)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter, channels_last=self.channels_last)


@persistence.persistent_class
class SynthesisNetwork(torch.nn.Module):
    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512, num_fp16_res=0,
                 **block_kwargs):
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(2, self.img_resolution_log2 + 1)]
        channels_dict = {{res: min(channel_base // res, channel_max) for res in self.block_resolutions}}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = channels_dict[res // 2] if res > 4 else 0
            out_channels = channels_dict[res]
            use_fp16 = (res >= fp16_resolution)
            is_last = (res == self.img_resolution)
            block = SynthesisBlock(in_channels, out_channels, w_dim=w_dim, resolution=res,
                                   img_channels=img_channels, is_last=is_last, use_fp16=use_fp16, **block_kwargs)
            self.num_ws += block.num_conv
            if is_last:
                self.num_ws += block.num_torgb
            setattr(self, f"b{{res}}", block)


@persistence.persistent_class
class Generator(torch.nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs={{}},
                 synthesis_kwargs={{}}):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)


@persistence.persistent_class
class Discriminator(torch.nn.Module):
    def __init__(self, c_dim, img_resolution, img_channels):
        super().__init__()
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.out = FullyConnectedLayer(img_channels * img_resolution ** 2, 1)
'''

_STANDIN_FILES = {
    "dnnlib/__init__.py": DNNLIB_INIT_SRC,
    "dnnlib/util.py": DNNLIB_UTIL_SRC,
    "torch_utils/__init__.py": "",
    "torch_utils/persistence.py": PERSISTENCE_SRC,
    "training/__init__.py": "",
    "training/networks.py": NETWORKS_SRC,
}
_STANDIN_PACKAGES = ("dnnlib", "torch_utils", "training")


def _is_standin_module(name: str) -> bool:
    return name.split(".")[0] in _STANDIN_PACKAGES or name.startswith("_imported_module_")


@contextlib.contextmanager
def nvidia_standins(root: Path):
    """Make NVIDIA's ``dnnlib``, ``torch_utils`` and ``training`` importable from
    ``root``; afterwards remove them from ``sys.path`` and ``sys.modules``."""
    root = Path(root)
    for rel, src in _STANDIN_FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(src)
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        for name in [n for n in sys.modules if _is_standin_module(n)]:
            del sys.modules[name]


def make_nvidia_pickle(path: Path, standin_root: Path, *, size=16, z_dim=12, w_dim=10, n_mlp=2, channel_base=96,
                       channel_max=24, conv_clamp=None, c_dim=0, embed_features=None, architecture="skip", seed=0,
                       tensors: dict | None = None, numpy1=False) -> dict:
    """Write a network pickle as stylegan2-ada-pytorch's training loop does and return
    ``G_ema``'s tensors under NVIDIA's names (``mapping.fc0.weight``...).

    The top block is an fp16 block with channels-last weights (NVIDIA's
    ``num_fp16_res``/``fp16_channels_last``); biases, noise strengths and ``w_avg``
    are random so that each takes part in the image, unless ``tensors`` (a state
    dict under NVIDIA's names) gives the weights. ``c_dim > 0`` makes a
    class-conditional generator (``mapping.embed``, ``embed_features`` wide).
    ``numpy1``: write the file as Python 3.7 with numpy 1.x did (protocol 3, numpy
    globals under ``numpy.core.*``) instead of the running numpy's names."""
    with nvidia_standins(standin_root):
        import dnnlib
        from training import networks

        torch.manual_seed(seed)
        G = networks.Generator(
            z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=size, img_channels=3,
            mapping_kwargs=dnnlib.EasyDict(num_layers=n_mlp, embed_features=embed_features),
            synthesis_kwargs=dnnlib.EasyDict(channel_base=channel_base, channel_max=channel_max, num_fp16_res=1,
                                             fp16_channels_last=True, conv_clamp=conv_clamp,
                                             architecture=architecture))
        with torch.no_grad():
            for name, p in G.named_parameters():
                if name.endswith("bias") or name.endswith("noise_strength"):
                    p.add_(0.3 * torch.randn_like(p))
            G.mapping.w_avg.normal_()
        if tensors is not None:
            G.load_state_dict(tensors)
        D = networks.Discriminator(c_dim=c_dim, img_resolution=size, img_channels=3)
        data = {"G": G, "D": D, "G_ema": G, "augment_pipe": None,
                "training_set_kwargs": dnnlib.EasyDict(class_name="training.dataset.ImageFolderDataset",
                                                       path="~/datasets/toy.zip", resolution=size,
                                                       use_labels=c_dim > 0)}
        blob = pickle.dumps(data, protocol=3 if numpy1 else None)
        if numpy1:  # protocol 3 names globals in plain GLOBAL opcodes ("c<module>\n<name>\n")
            blob = blob.replace(b"cnumpy._core.", b"cnumpy.core.")
        Path(path).write_bytes(blob)
        return {k: v.detach().clone() for k, v in G.state_dict().items()}
