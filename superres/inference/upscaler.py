"""The Upscaler: a generator on one device, for images in host memory.

`Upscaler` owns one generator on one device and wraps that function for host-memory images:
`upscale_pixels` cuts a (H, W, C) array into tiles (tiling.tiled_upscale), so the whole image and the
result stay in host memory and only one tile at a time visits the device. Alpha, grayscale, resizing,
PIL / numpy / tensor in and out are wrapped around it. `superres upscale` (apps/filejob.py) is the file job.

Threads (e.g. a web server): one Upscaler may be shared. Its settings are fixed at construction and
a call mutates nothing shared except the OOM back-off's tile limit, under a lock. Device work takes
the device's lock (`device_lock`), one tile at a time, so concurrent calls interleave by tile rather
than run two forwards on one accelerator at once.
"""
from __future__ import annotations

import copy
import logging
import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..archs import input_multiple
from ..io.images import (
    ImageData,
    image_from_array,
    image_from_pil,
    image_to_array,
    image_to_pil,
    max_value,
    resize_image,
    resize_plane,
)
from . import runtime
from .adaptive import analyze_for_strength, auto_strength
from .core import (
    MAX_AUTO_TILE,
    _fits_cpu_budget,
    auto_tile_size,
    configure_host_allocator,
    device_lock,
    upscale_tensor,
)
from .models import MODELS, default_model_name, resolve_model_path
from .runtime import ALPHA_MODES, DEFAULT_OVERLAP
from .tiling import count_tiles, tiled_upscale
from .weights import load_generator, read_state_dict

log = logging.getLogger(__name__)

__all__ = ["Upscaler", "output_size"]


class Upscaler:
    """A generator ready to upscale images.

    >>> up = Upscaler.from_pretrained("psnr-x4")
    >>> sr = up.upscale(Image.open("photo.jpg"))     # PIL in, PIL out; numpy in, numpy out

    tile: LR tile side (0 = whole image at once, None = automatic from free memory).
    precision: auto|fp32|bf16|fp16|int8 (auto: bf16 + channels_last on CPUs with native bf16, fp16 on
    CUDA). A tile whose low-precision output has NaN/Inf is recomputed in fp32. int8 (CPU only)
    replaces the model by its ONNX Runtime int8 form (inference/int8.py): the file shipped beside a
    shipped model's weights, or quantized now from `int8_calibration` (LR tensors (N, C, h, w) in
    [0, 1], or image folders).
    Safe to share between threads (see the module docstring).
    """

    def __init__(self, model: nn.Module, info: dict[str, Any] | None = None, *, device: str = "auto",
                 precision: str = "auto", tile: int | None = None, tile_overlap: int = DEFAULT_OVERLAP,
                 name: str | None = None, int8_calibration: Any = None, engine: str = "torch") -> None:
        self.info = dict(info or {})
        self.device = runtime.pick_device(device)
        if precision not in runtime.INFERENCE_PRECISIONS:
            raise runtime.RuntimeChoiceError(f"precision {precision!r}; allowed values: "
                                             f"{', '.join(runtime.INFERENCE_PRECISIONS)}")
        if int8_calibration is not None and precision != "int8":
            raise runtime.RuntimeChoiceError(f"int8 calibration images were given for precision {precision!r}; "
                                             "they are only used with precision 'int8'")
        if precision == "int8":
            runtime.check_int8(self.device)
            from .int8 import int8_generator

            self.amp_dtype = None
            self.precision = "int8"
            fp32_model = model.eval()
            asked = self._int8_engine_asked(engine)   # checked before anything is quantized
            model = int8_generator(fp32_model, self.info, calibration=int8_calibration,
                                   engine=asked or "onnxruntime")
            if asked is None:   # auto: ONNX Runtime's graph is the reference the probe compares with
                from .engines import choose_int8_engine

                model = model.on(choose_int8_engine(fp32_model.to("cpu"), model.on))
        else:
            policy = runtime.inference_policy(precision, self.device)
            self.amp_dtype = policy.amp_dtype
            self.precision = policy.name
        self.channels_last = self.amp_dtype is not None and self.device.type == "cpu"   # as inference_policy
        self.engine = model.engine if self.precision == "int8" else self._pick_engine(engine, model)
        # the torch module the engine runs (blends are made from it); self.model is what runs
        self._torch_model = model.eval().to(self.device)
        if self.engine != "torch" and self.precision != "int8":
            from .engines import engine_generator

            model = engine_generator(self._torch_model, self.engine)
        self.model = model.eval().to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        for p in self.model.parameters():
            p.requires_grad_(False)
        hp = getattr(model, "hparams", {}) or self.info.get("hparams", {})
        self.scale = int(self.info.get("scale") or hp.get("upscale") or hp.get("scale"))
        self.in_channels = int(hp.get("num_in_ch", 3))
        # from the model's registry entry, not its name: pixel-unshuffle nets need padded inputs
        self.multiple = input_multiple(self.model, self.scale)
        self.tile = tile
        self.tile_overlap = tile_overlap
        self.name = name or self.info.get("name") or self.info.get("arch", "model")
        self._lock = device_lock(self.device)
        # The largest tile known to fit after a CUDA OOM (None: no OOM yet); later calls start there
        # instead of failing again. Only ever lowered, under _limit_lock.
        self._tile_limit: int | None = None
        self._limit_lock = threading.Lock()
        # A blend family picking its strength per image (`strength="auto"`): the two ends' weights
        # and the blends made so far, by strength (each a copy of the net), made under _blend_lock.
        # The clean end (models.ModelEntry.clean), when the family has one, takes the light end's
        # place for inputs with no JPEG history; blends are keyed by (end, strength).
        self._family: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None
        self._clean: dict[str, torch.Tensor] | None = None
        self._blends: dict[tuple[str, float], nn.Module] = {}
        self._blend_lock = threading.Lock()

    def _pick_engine(self, engine: str, model: nn.Module) -> str:
        """torch, or an ONNX engine for fp32 on the CPU (`auto`: the measured choice, engines.py)."""
        from .engines import ENGINES, EngineError, choose_engine

        if engine not in ENGINES:
            raise EngineError(f"engine {engine!r}; allowed values: {', '.join(ENGINES)}")
        if engine == "torch":
            return "torch"
        fp32_cpu = self.amp_dtype is None and self.device.type == "cpu"
        if engine == "auto":
            return choose_engine(model.eval().to("cpu")) if fp32_cpu else "torch"
        if not fp32_cpu:
            raise EngineError(f"engine {engine!r} runs fp32 on the CPU; here the precision is {self.precision} "
                              f"on {self.device}: use --engine torch (or auto)")
        return engine

    @staticmethod
    def _int8_engine_asked(engine: str) -> str | None:
        """Who runs the int8 graph: ONNX Runtime (also for `torch`, the library's default, which
        has no int8 kernels of its own), OpenVINO when asked, or None for `auto`: the faster of the
        two where OpenVINO is installed and its output is within 1 level of ONNX Runtime's."""
        from .engines import ENGINES, EngineError

        if engine not in ENGINES:
            raise EngineError(f"engine {engine!r}; allowed values: {', '.join(ENGINES)}")
        if engine in ("torch", "onnxruntime"):
            return "onnxruntime"
        if engine == "winograd":
            raise EngineError("engine 'winograd' runs fp32 convolutions; with precision 'int8' use --engine "
                              "auto, onnxruntime or openvino")
        if engine == "openvino":
            return "openvino"
        return None

    @property
    def adaptive(self) -> bool:
        """Whether this Upscaler picks a blend per image (`--strength auto` of a blend family)."""
        return self._family is not None

    @property
    def has_clean_end(self) -> bool:
        """Whether this adaptive Upscaler swaps in a clean end for inputs with no JPEG history."""
        return self._family is not None and self._clean is not None

    def _set_family(self, light: dict[str, torch.Tensor], heavy: dict[str, torch.Tensor],
                    clean: dict[str, torch.Tensor] | None = None) -> None:
        if self.precision == "int8":
            raise runtime.RuntimeChoiceError(
                f"{self.name} picks a blend of two models per image, and int8 runs one fixed model "
                "(its ONNX file); for int8 pick one end by name (e.g. photo-x4-light or realnet-x4)")
        self._family = ({k: v.detach().cpu().clone() for k, v in light.items()},
                        {k: v.detach().cpu().clone() for k, v in heavy.items()})
        self._clean = None if clean is None else {k: v.detach().cpu().clone() for k, v in clean.items()}
        self._blends = {("light", 0.0): self.model}

    def choose_strength(self, pixels: np.ndarray | None = None, measures: dict[str, Any] | None = None
                        ) -> float | None:
        """The strength this Upscaler runs an image at: for an adaptive one, `adaptive.auto_strength`
        of the image's measures (given, or taken from `pixels`); otherwise the fixed blend of its
        weights (None = the model as trained)."""
        if self._family is None:
            return self.info.get("strength")
        if measures is None:
            if pixels is None:
                raise ValueError("choose_strength needs the image's pixels or its measures")
            measures = analyze_for_strength(pixels)
        return auto_strength(measures)

    def choose_end(self, pixels: np.ndarray | None = None, measures: dict[str, Any] | None = None) -> str:
        """Which end the blend starts from: "clean" when the family has a clean end and the input
        has no JPEG history (`measures["jpeg_history"] is False`) and nothing for the heavy end to
        remove (`--strength auto` picks 0 for it), from `measures` or taken from `pixels`; else
        "light". A blurred or noisy input with no JPEG grid (e.g. one resized after its last JPEG)
        keeps the light end, which was trained on such damage."""
        if not self.has_clean_end:
            return "light"
        if measures is None or "jpeg_history" not in measures:
            if pixels is None:
                raise ValueError("choose_end needs the image's pixels or its measures")
            measures = analyze_for_strength(pixels)
        clean = measures.get("jpeg_history") is False and auto_strength(measures) == 0.0
        return "clean" if clean else "light"

    def choose_blend(self, pixels: np.ndarray) -> tuple[float | None, str]:
        """(strength, end) of `choose_strength` and `choose_end` from one analysis of `pixels`."""
        if self._family is None:
            return self.choose_strength(), "light"
        measures = analyze_for_strength(pixels)
        return self.choose_strength(measures=measures), self.choose_end(measures=measures)

    def _model_at(self, strength: float | None, end: str = "light") -> nn.Module:
        """The net for a strength of the family from its light or clean end (self.model when not adaptive)."""
        if self._family is None or strength is None:
            return self.model
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        if end not in ("light", "clean"):
            raise ValueError(f"end {end!r}; allowed values: light, clean")
        if end == "clean" and self._clean is None:
            raise ValueError(f"{self.name} has no clean end")
        key = (end, round(float(strength), 2))
        with self._blend_lock:
            model = self._blends.get(key)
            if model is None:
                from .interpolate import interpolate_state_dicts

                start = self._clean if end == "clean" else self._family[0]
                model = copy.deepcopy(self._torch_model)
                model.load_state_dict(interpolate_state_dicts(start, self._family[1], key[1]), strict=True)
                if self.engine != "torch":
                    from .engines import engine_generator

                    model = engine_generator(model, self.engine)
                self._blends[key] = model
        return model

    def tune_host_allocator(self) -> bool:
        """Make glibc's malloc keep freed memory for reuse, for the whole process, when this
        Upscaler's CPU tiles fit the budget; True if it is (now or already) tuned.

        CPU tiles' activations live in host memory: reusing it beats faulting it in anew for every
        tile. Not for bigger tiles or whole images, whose blocks fragment a heap that is never given
        back (2.5x the peak for psnr-x4 at 512; see CPU_TILE_BYTES). A process-wide setting, so the
        applications that run many tiles switch it on (upscale, video, cluster workers, serve,
        bench); constructing an Upscaler leaves the process as it was.
        """
        if self.device.type == "cpu" and _fits_cpu_budget(self.model, self.scale, self.tile):
            return configure_host_allocator()
        return False

    @staticmethod
    def tune_host_allocator_before(device: str | torch.device = "auto", tile: int | None = None) -> bool:
        """tune_host_allocator for an Upscaler about to be built with these options: automatic
        tiles on the CPU always fit the budget. The applications call it first so that `--engine
        auto`'s probe measures the engines in the state the process will run them in (untuned,
        glibc faults every big torch buffer in anew and torch looks slower than it is)."""
        try:
            cpu = runtime.pick_device(str(device)).type == "cpu"
        except runtime.RuntimeChoiceError:
            return False   # the constructor reports a device that is not there
        return configure_host_allocator() if cpu and tile is None else False

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | None = None, *,
                        strength: float | str | None = None, hparams: dict[str, Any] | None = None,
                        **kwargs: Any) -> "Upscaler":
        """A shipped model by name (None = the default) or any weights file we can load.

        strength: for a blend family (the default photo-x4): "auto" or None picks the blend per
        image from its analysis (inference/adaptive.py), a number in [0, 1] fixes it (0 = the light
        end, 1 = the heavy one). For a GAN model with a PSNR twin: a number blends toward the twin
        (ESRGAN network interpolation; 1 = the GAN model as trained, 0 = the PSNR model); "auto" or
        None = as trained. hparams: hyperparameters a foreign file's keys cannot reveal (e.g.
        {"act_type": "leakyrelu"}); see weights.load_generator.
        """
        if isinstance(strength, str) and strength != "auto":
            raise ValueError(f"strength {strength!r}; allowed values: auto or a number in [0, 1]")
        name = str(name_or_path) if name_or_path is not None else default_model_name()
        path = resolve_model_path(name)
        model, info = load_generator(path, hparams=hparams)
        info["name"] = name if name in MODELS else Path(name).stem
        heavy = MODELS[name].heavy if name in MODELS else None
        if heavy is not None:
            heavy_state, _ = read_state_dict(resolve_model_path(heavy))
            info["heavy"] = heavy
            if strength is None or strength == "auto":
                light_state = {k: v.clone() for k, v in model.state_dict().items()}
                clean = MODELS[name].clean
                clean_state = None
                if clean is not None and MODELS[clean].available:
                    clean_state, _ = read_state_dict(resolve_model_path(clean))
                    info["clean"] = clean
                up = cls(model, info, **kwargs)
                up._set_family(light_state, heavy_state, clean_state)
                return up
            _blend_family(model, info, heavy_state, float(strength))
        elif strength not in (None, "auto") and strength != 1.0:
            _blend_with_twin(model, info, path, float(strength))
        return cls(model, info, **kwargs)

    # -- the core -------------------------------------------------------------------------------

    def _run_tile(self, x: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        """(1, C, h, w) float32 in [0, 1] on the CPU -> (1, C, h*s, w*s) float32 on the device."""
        with self._lock:
            x = x.to(self.device, non_blocking=True)
            return upscale_tensor(model or self.model, x, amp_dtype=self.amp_dtype,
                                  channels_last=self.channels_last, multiple=self.multiple)

    def tile_size(self) -> int:
        """The LR tile side the next call starts with: the setting (or the automatic size), capped
        by what the OOM back-off has learnt."""
        tile = self.tile if self.tile is not None else auto_tile_size(self.model, self.scale, self.device)
        limit = self._tile_limit
        if limit is not None and (tile <= 0 or tile > limit):
            return limit
        return tile

    def upscale_pixels(self, pixels: np.ndarray, *, on_tile: Callable[[int, int], None] | None = None,
                       strength: float | None = None, end: str | None = None) -> np.ndarray:
        """(H, W, C) uint8/uint16/float32 array -> (H*s, W*s, C) in the same dtype.

        Any C: a 1-channel image goes through an RGB model as three equal channels and comes back as
        the mean of the three; RGB through a 1-channel model goes plane by plane. strength, end: the
        blend of an adaptive Upscaler (both None = `choose_blend` of these pixels; a strength with
        no end starts from the light end); ignored otherwise.
        """
        if pixels.ndim == 2:
            return self.upscale_pixels(pixels[..., None], on_tile=on_tile, strength=strength, end=end)[..., 0]
        if self._family is not None and strength is None:
            strength, picked = self.choose_blend(pixels)
            end = end or picked
        model = self._model_at(strength, end or "light")
        c = pixels.shape[2]
        if c == self.in_channels:
            def forward(x: torch.Tensor) -> torch.Tensor:
                return self._run_tile(x, model)
        elif self.in_channels == 3 and c == 1:
            def forward(x: torch.Tensor) -> torch.Tensor:
                return self._run_tile(x.expand(-1, 3, -1, -1), model).mean(dim=1, keepdim=True)
        elif self.in_channels == 1:
            def forward(x: torch.Tensor) -> torch.Tensor:
                return torch.cat([self._run_tile(x[:, i:i + 1], model) for i in range(x.shape[1])], dim=1)
        else:
            raise ValueError(f"a {c}-channel image cannot go through a {self.in_channels}-channel model")
        tile = self.tile_size()
        while True:
            try:
                return tiled_upscale(pixels, forward, scale=self.scale, tile=tile, overlap=self.tile_overlap,
                                     multiple=self.multiple, on_tile=on_tile)
            except torch.cuda.OutOfMemoryError:   # only CUDA raises this type
                torch.cuda.empty_cache()
                side = tile if tile > 0 else max(pixels.shape[:2])
                if side <= 32:
                    raise
                tile = max(32, side // 2)
                with self._limit_lock:
                    if self._tile_limit is None or tile < self._tile_limit:
                        self._tile_limit = tile
                log.warning("CUDA out of memory; retrying with tile %d (later calls start there)", tile)

    def count_tiles(self, height: int, width: int) -> int:
        return count_tiles(height, width, self.tile_size(), self.tile_overlap, self.multiple)

    def upscale_frames(self, frames: list[np.ndarray], *, strength: float | None = None,
                       end: str | None = None) -> list[np.ndarray]:
        """Several same-size uint8 (H, W, C) frames (video) -> their upscales, several per forward
        when they fit together in one tile's area (the memory the tile size was chosen for);
        otherwise frame by frame through the tiles. The result of a frame is what `upscale_pixels`
        gives it, up to the last bit of fp32 arithmetic that a different batch size may change (conv
        kernels pick their blocking by shape). An adaptive Upscaler runs all of them at `strength`
        (None: `choose_strength` of the first frame) from `end` (None: the light end: video codecs
        leave no JPEG grid to read), so a video does not flicker between blends."""
        if not frames:
            return []
        if self._family is not None and strength is None:
            strength = self.choose_strength(frames[0])
        end = end or "light"
        h, w, c = frames[0].shape
        tile = self.tile_size()
        if self.tile is None and self._tile_limit is None:
            # The CPU cap is there for tiles of many sizes, which fragment a heap that is kept for
            # reuse; a run of same-size frames allocates alike batch after batch, so it may batch
            # up to the memory-based size, as before the cap (psnr-x4, 160x90: 8 frames a forward)
            tile = auto_tile_size(self.model, self.scale, self.device, cap=MAX_AUTO_TILE)
        per = len(frames) if tile <= 0 else (tile * tile) // (h * w)
        same = all(f.shape == frames[0].shape and f.dtype == np.uint8 for f in frames)
        if len(frames) == 1 or per < 2 or not same or c != self.in_channels:
            return [self.upscale_pixels(f, strength=strength, end=end) for f in frames]
        if len(frames) > per:
            return [y for i in range(0, len(frames), per)
                    for y in self.upscale_frames(frames[i:i + per], strength=strength, end=end)]
        x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div_(255.0)   # (B, C, H, W)
        model = self._model_at(strength, end)
        with self._lock:
            y = upscale_tensor(model, x.to(self.device), amp_dtype=self.amp_dtype,
                               channels_last=self.channels_last, multiple=self.multiple)
        # The same rounding as tiling._finish: clip, scale, +0.5, truncate.
        out = (y.float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return list(out)

    # -- whole images ---------------------------------------------------------------------------

    def upscale_image(self, img: ImageData, *, outscale: float | None = None, width: int | None = None,
                      height: int | None = None, alpha: str = "model",
                      on_tile: Callable[[int, int], None] | None = None,
                      strength: float | None = None, end: str | None = None) -> ImageData:
        """An ImageData (colour planes, alpha, ICC, EXIF) upscaled; metadata is carried over.
        strength, end: the blend of an adaptive Upscaler (None: chosen from the colour planes; a
        strength with no end starts from the light end)."""
        if alpha not in ALPHA_MODES:
            raise ValueError(f"alpha={alpha!r}; allowed values: {', '.join(ALPHA_MODES)}")
        target = output_size(img.width, img.height, self.scale, outscale=outscale, width=width, height=height)
        if self._family is not None and strength is None:
            strength, picked = self.choose_blend(img.pixels)
            end = end or picked
        end = end or "light"
        pixels = self.upscale_pixels(img.pixels, on_tile=on_tile, strength=strength, end=end)
        out_alpha = None
        if img.alpha is not None:
            if alpha == "model":
                out_alpha = self.upscale_pixels(img.alpha[..., None], strength=strength, end=end)[..., 0]
                _keep_flat_alpha(out_alpha, img.alpha, self.scale)
            else:
                out_alpha = resize_plane(img.alpha, img.width * self.scale, img.height * self.scale,
                                         Image.Resampling.BICUBIC)
        out = replace(img, pixels=pixels, alpha=out_alpha)
        return resize_image(out, *target)

    def upscale(self, image: Any, **kwargs: Any) -> Any:
        """Upscale a PIL image, a numpy array ((H, W) / (H, W, C), C in 1..4, uint8/uint16/float in
        [0, 1]), a torch tensor ((C, H, W) or (N, C, H, W) in [0, 1]) or an ImageData; the result has
        the input's type (and dtype/mode where it can hold the result). Keyword arguments as
        `upscale_image` (outscale, width, height, alpha).
        """
        if isinstance(image, ImageData):
            return self.upscale_image(image, **kwargs)
        if isinstance(image, Image.Image):
            out = self.upscale_image(image_from_pil(image), **kwargs)
            return image_to_pil(out, image.mode)
        if isinstance(image, np.ndarray):
            return image_to_array(self.upscale_image(image_from_array(image), **kwargs), image)
        if isinstance(image, torch.Tensor):
            if image.ndim == 4:
                return torch.stack([self.upscale(t, **kwargs) for t in image])
            # through the array path, which knows gray+alpha and RGBA (C = 2, 4) as well
            arr = np.ascontiguousarray(image.detach().to("cpu", torch.float32).permute(1, 2, 0).numpy())
            out = self.upscale(arr, **kwargs)
            return torch.from_numpy(out).permute(2, 0, 1).to(image.device, image.dtype)
        raise TypeError(f"cannot upscale a {type(image).__name__}; pass a PIL image, a numpy array, "
                        "a torch tensor or an ImageData")

    __call__ = upscale


def _keep_flat_alpha(out: np.ndarray, lr: np.ndarray, scale: int) -> None:
    """In place: where the LR alpha is fully transparent (or fully opaque) over a whole 3x3
    neighbourhood, the model's alpha becomes exactly 0 (or full).

    A network's output drifts by a level or two on flat input (biases, GAN texture); on an alpha
    plane that turns a transparent background into a faint veil over the whole image.
    """
    h, w = lr.shape
    if out.shape != (h * scale, w * scale) or not out.flags.c_contiguous:
        return   # the reshape below would be a copy, and writing to it would change nothing
    full = max_value(lr.dtype)
    win = np.lib.stride_tricks.sliding_window_view(np.pad(lr, 1, mode="edge"), (3, 3))
    lo, hi = win.min(axis=(2, 3)), win.max(axis=(2, 3))
    view = out.reshape(h, scale, w, scale)   # a view: out is the fresh contiguous model output
    np.copyto(view, np.asarray(0, out.dtype), where=(hi == 0)[:, None, :, None])
    np.copyto(view, np.asarray(full, out.dtype), where=(lo == full)[:, None, :, None])


def output_size(w: int, h: int, scale: int, *, outscale: float | None = None, width: int | None = None,
                height: int | None = None) -> tuple[int, int]:
    """The final (width, height): the model's scale, or --outscale, or --width/--height (one of them
    keeps the aspect ratio)."""
    if outscale is not None and (width or height):
        raise ValueError("give either outscale or width/height, not both")
    if width or height:
        if width and height:
            return int(width), int(height)
        if width:
            return int(width), max(1, round(h * width / w))
        return max(1, round(w * height / h)), int(height)
    f = scale if outscale is None else float(outscale)
    if f <= 0:
        raise ValueError(f"outscale must be positive, got {outscale}")
    return max(1, round(w * f)), max(1, round(h * f))


def _blend_family(model: nn.Module, info: dict[str, Any], heavy: dict[str, torch.Tensor], strength: float) -> None:
    """In place: weights = (1 - strength) * this (light) model + strength * the family's heavy end."""
    from .interpolate import interpolate_state_dicts

    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    model.load_state_dict(interpolate_state_dicts(model.state_dict(), heavy, strength), strict=True)
    info["strength"] = strength
    info["name"] = f"{info.get('name', 'model')}@{strength:g}"


def _blend_with_twin(model: nn.Module, info: dict[str, Any], path: Path, strength: float) -> None:
    """In place: weights = strength * this model + (1 - strength) * its PSNR twin."""
    from .interpolate import interpolate_state_dicts

    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    twin = info.get("metadata", {}).get("psnr_twin")
    if not twin:
        raise ValueError(f"{path.name} has no PSNR twin recorded in its metadata (psnr_twin), so "
                         "--strength cannot blend it; use `superres interpolate` with two files instead")
    twin_path = resolve_model_path(twin) if twin in MODELS else (path.parent / twin)
    twin_state, _ = read_state_dict(twin_path)
    blended = interpolate_state_dicts(twin_state, model.state_dict(), strength)
    model.load_state_dict(blended, strict=True)
    info["strength"] = strength
    info["name"] = f"{info.get('name', path.stem)}@{strength:g}"
