"""``torch.compile`` (inductor) for the denoising UNet, region by region, with an on-disk cache.

What is compiled: every layer component of the denoiser (each resnet, spatial transformer, audio
module, motion module, down/upsampler), one compiled callable per module, not the whole forward.
The stage executor (:meth:`TalkingUNet.forward`) and the :class:`~.unet.StagePlan` of a call stay
eager Python, so the accelerators' cuts (full pass, shallow/reduced pass, captured features) run
the same compiled layers: a reduced pass runs the compiled layers of the stages it keeps. Each
distinct input shape (CFG x2, a reduced call's batch of several steps) is one more static
specialisation (``dynamic=False``: a batch of 2 and one of 6 are two graphs per layer; pad reduced
calls, ``--cache-pad``, to bound them); layers of the same class and shapes share the cached code.

Settings: default mode (no max-autotune), Python wrapper, no ``freezing`` (see
:data:`INDUCTOR_OPTIONS`: it would disable the persistent cache on a CPU); compiled layers run only
under ``no_grad``/``inference_mode`` (a call with grad enabled, training, runs eagerly). MEMO's memory motion modules stay eager (their
memory changes from clip to clip). A layer whose compilation fails runs eagerly from then on (a
debug log says which and why); it never stops the generation.

The persistent cache: inductor's FX graph cache (on by default in torch 2.x) keeps the compiled
kernels in ``TORCHINDUCTOR_CACHE_DIR``, which :func:`use_cache_dir` points at
``<talkfast cache>/inductor`` (:func:`talkfast.paths.cache_dir`) unless the user set it, so a
second process loads the kernels instead of compiling them again (Dynamo still traces each layer
once per process: a warm first call is seconds, not zero). Inductor keys its entries by the graph,
the shapes, the torch version and its settings (the weights are inputs, not part of the key), so
one folder serves every model.
"""

from __future__ import annotations

import logging
import os
import stat

import torch
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from torch import nn

from ..errors import InputError
from ..paths import cache_dir
from .layers import AudioModule, MotionModule, SpatialTransformer
from .memo_layers import JointAudioModule

log = logging.getLogger(__name__)

#: The module classes compiled one by one (the denoiser's layer components).
REGIONS = (ResnetBlock2D, SpatialTransformer, AudioModule, JointAudioModule, MotionModule, Downsample2D, Upsample2D)
#: Inductor settings patched around every compiled call. ``freezing`` stays off: on a CPU it
#: prepacks the weights as mkldnn tensors, and inductor then bypasses its FX graph cache ("mkldnn
#: tensors unpickleable", torch 2.13), so every process would lower every graph again.
INDUCTOR_OPTIONS = {"freezing": False}
#: Dynamo's per-code-object recompile limit while compiling: every region class shares one code
#: object, and each (layer shapes, batch) is one entry; torch's default of 8 would send the later
#: layers back to eager.
RECOMPILE_LIMIT = 256


def use_cache_dir() -> str:
    """Point inductor's on-disk cache at ``<talkfast cache>/inductor`` unless
    ``TORCHINDUCTOR_CACHE_DIR`` is already set (the user's choice wins); returns the folder used.
    A missing folder is created private (0700: inductor would create it with the umask's mode,
    group-writable under a 002 umask). Inductor stores its entries with pickle and loads the
    generated code as Python modules, so a folder another user can write is refused
    (:class:`~talkfast.errors.InputError`), as ssh refuses a ``~/.ssh`` others can write."""
    folder = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or str(cache_dir() / "inductor")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    check_private(folder)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    return folder


def check_private(folder: str) -> None:
    """The cache folder must belong to this user and be writable by no one else (POSIX; elsewhere
    nothing is checked)."""
    if not hasattr(os, "geteuid"):
        return
    st = os.stat(folder)
    why = ("belongs to another user" if st.st_uid != os.geteuid()
           else f"is writable by other users (mode {stat.S_IMODE(st.st_mode):04o})" if st.st_mode & 0o022 else None)
    if why:
        raise InputError(f"--compile on: the compiled-kernel cache folder {folder} {why}; torch loads pickled "
                         "entries and generated code from it, so talkfast will not use it. Make it yours and "
                         f"private (chmod go-w {folder}) or set TORCHINDUCTOR_CACHE_DIR to a folder only you can write")


class _Region:
    """The compiled call of one module with an eager fallback: a failure while compiling (or
    running the compiled code) is logged at debug level and the module runs eagerly from then on."""

    def __init__(self, module: nn.Module, name: str, owner: nn.Module, backend: str):
        self.module, self.name, self.owner = module, name, owner
        # the module's forward, not its ``_call_impl``: Dynamo does not trace the latter's frame
        # (torch/nn is skipped; torch 2.13 traced nothing for ``nn.Module.compile()`` of a
        # torch.nn layer). Module hooks are bypassed (the denoiser has none).
        self.eager = module.forward
        self.compiled = torch.compile(self.eager, backend=backend, dynamic=False)
        self.failed: str | None = None

    def __call__(self, *args, **kwargs):
        if self.failed is None and self.owner._talkfast_compile_on:
            if torch.is_grad_enabled():  # frozen weights are for inference only
                return self.eager(*args, **kwargs)
            try:
                # patched around the call, not passed as torch.compile options: Dynamo reads
                # ``freezing`` while tracing (with it on it guards each weight by identity, so a
                # second network never runs code frozen with the first's weights)
                with torch._inductor.config.patch(INDUCTOR_OPTIONS):
                    return self.compiled(*args, **kwargs)
            except Exception as err:  # a backend or tracing failure: this layer stays eager
                self.failed = f"{type(err).__name__}: {err}"
                log.debug("torch.compile failed for %s; it runs eagerly: %s", self.name, self.failed)
        return self.eager(*args, **kwargs)


def compile_denoiser(net, enabled: bool = True, *, backend: str = "inductor", regions: tuple = REGIONS) -> list[str]:
    """Compile the layer components of ``net.denoising_unet`` in place, once: a later call only
    switches the compiled code on or off (``enabled`` False runs every layer eagerly; before any
    compilation it does nothing). Returns the names of the modules compiled. The weights must not
    change shape or dtype afterwards (each new one compiles again).
    ``backend`` / ``regions``: torch.compile's backend and the module classes compiled (tests
    compile fewer kinds to keep their compile time short)."""
    unet = net.denoising_unet
    if getattr(unet, "_talkfast_compiled", None) is not None or not enabled:
        if getattr(unet, "_talkfast_compiled", None) is not None:
            unet._talkfast_compile_on = enabled
        return getattr(unet, "_talkfast_compiled", None) or []
    use_cache_dir()
    dyn = torch._dynamo.config
    dyn.recompile_limit = max(dyn.recompile_limit, RECOMPILE_LIMIT)
    dyn.accumulated_recompile_limit = max(dyn.accumulated_recompile_limit, 4 * RECOMPILE_LIMIT)
    names = []
    for name, module in unet.named_modules():
        if not isinstance(module, regions):
            continue
        if isinstance(module, MotionModule) and module.source is not None:
            continue  # MEMO's memory motion modules: their memory changes per clip
        if any(name.startswith(n + ".") for n in names):
            continue  # inside a module already compiled
        module._compiled_call_impl = _Region(module, name, unet, backend)
        names.append(name)
    unet._talkfast_compiled, unet._talkfast_compile_on = names, True
    return names


def compiled_regions(net) -> dict[str, str | None]:
    """{module name: None, or why it fell back to eager} for a compiled denoiser ({} if not compiled)."""
    unet = net.denoising_unet
    out = {}
    for name in getattr(unet, "_talkfast_compiled", None) or []:
        region = unet.get_submodule(name)._compiled_call_impl
        out[name] = region.failed if isinstance(region, _Region) else "not compiled"
    return out
