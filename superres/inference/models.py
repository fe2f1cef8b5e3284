"""Models shipped with the package, by name.

Weights live in `superres/pretrained/` (installed with the package); a name maps to a file there.
A name whose file is not present says so instead of failing later.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    filename: str
    scale: int
    description: str
    # what the model was trained for: "clean" (bicubic-downscaled, the paper benchmarks) or "real"
    # (photos with blur, noise and JPEG: the `realistic` degradation)
    inputs: str = "clean"
    # A blend family: the model at the other end of `--strength` (0 = this file, 1 = that model), with
    # the strength picked per image from the input analysis (inference/adaptive.py) unless given.
    heavy: str | None = None
    # A blend family's clean end: the model that takes the light end's place, in `--strength auto`,
    # for an input whose pixels show no JPEG history (analysis.jpeg_history), e.g. a PNG render, a
    # scan or a photo downscaled from the camera's own output. Fine-tuned from the light end, so it
    # blends with the heavy end as the light end does. Optional: without its file the family runs
    # on its two ends.
    clean: str | None = None

    @property
    def path(self) -> Path:
        return PRETRAINED_DIR / self.filename

    @property
    def available(self) -> bool:
        return self.path.is_file() and (self.heavy is None or MODELS[self.heavy].available)


MODELS: dict[str, ModelEntry] = {
    "photo-x4": ModelEntry("photo-x4", "photo-x4-light.safetensors", 4,
                           "The default for photos: per image, a blend of photo-x4-light (clean and "
                           "lightly compressed inputs) and photo-x4-heavy (noisy, blurred, heavily "
                           "compressed ones), chosen from the input's noise, JPEG blocking and detail; "
                           "inputs with no JPEG history get photo-x4-clean in the light end's place.",
                           inputs="real", heavy="photo-x4-heavy", clean="photo-x4-clean"),
    "photo-x4-light": ModelEntry("photo-x4-light", "photo-x4-light.safetensors", 4,
                                 "Compact net fine-tuned from realnet-x4 with L1 on clean, camera-like and "
                                 "a few heavily degraded inputs: the faithful end of photo-x4.", inputs="real"),
    "photo-x4-clean": ModelEntry("photo-x4-clean", "photo-x4-clean.safetensors", 4,
                                 "photo-x4-light fine-tuned with L1 (then L1 plus a fine-detail loss) on mostly "
                                 "clean (never compressed) inputs and some camera-like ones: photo-x4's end for "
                                 "inputs with no JPEG history.",
                                 inputs="real"),
    "photo-x4-heavy": ModelEntry("photo-x4-heavy", "photo-x4-heavy.safetensors", 4,
                                 "realnet-x4 fine-tuned toward the photo's low frequencies plus Real-ESRGAN "
                                 "x4plus's high frequencies on heavily degraded inputs, with an extra loss on "
                                 "the fine detail (the teacher only made the training targets): the cleaning "
                                 "end of photo-x4.", inputs="real"),
    "psnr-x4": ModelEntry("psnr-x4", "psnr-x4.safetensors", 4,
                          "MSRResNet trained with L1 loss on T91+BSD200: highest fidelity (PSNR)."),
    "gan-x4": ModelEntry("gan-x4", "gan-x4.safetensors", 4,
                         "Adversarial fine-tune of psnr-x4: sharper, more natural texture."),
    "psnr-x2": ModelEntry("psnr-x2", "psnr-x2.safetensors", 2,
                          "MSRResNet x2 trained with L1 loss, started from psnr-x4: highest fidelity at x2."),
    "gan-x2": ModelEntry("gan-x2", "gan-x2.safetensors", 2,
                         "Adversarial fine-tune of psnr-x2: sharper, more natural texture at x2."),
    "real-x4": ModelEntry("real-x4", "real-x4.safetensors", 4,
                          "Adversarial fine-tune of realnet-x4 (compact net, Real-ESRGAN-style degradations): "
                          "for real photos with noise, blur and JPEG.", inputs="real"),
    "realnet-x4": ModelEntry("realnet-x4", "realnet-x4.safetensors", 4,
                             "Compact net trained with L1 on Real-ESRGAN-style degradations (blur, noise, JPEG, "
                             "twice): cleans real photos faithfully, without invented texture.", inputs="real"),
}

# The preferred default; falls back down this list to the first model whose file is shipped. Models
# for real photos come first: one trained only on clean bicubic LR sharpens noise and JPEG blocks.
DEFAULT_ORDER = ("photo-x4", "realnet-x4", "real-x4", "gan-x4", "psnr-x4")


def default_model_name() -> str:
    for name in DEFAULT_ORDER:
        if MODELS[name].available:
            return name
    return DEFAULT_ORDER[0]


class ModelNotFound(FileNotFoundError):
    pass


def resolve_model_path(name_or_path: str | os.PathLike | None) -> Path:
    """A registered model name or a path to a weights file -> path of an existing file."""
    if name_or_path is None:
        name_or_path = default_model_name()
    key = str(name_or_path)
    if key in MODELS:
        entry = MODELS[key]
        if not entry.available:
            shipped = [n for n, e in MODELS.items() if e.available] or ["none"]
            raise ModelNotFound(f"model {key!r} has no weights file in this installation "
                                f"(expected {entry.path}). Shipped models: {', '.join(shipped)}. "
                                "Train one with `superres train` or pass a path to a weights file.")
        return entry.path
    path = Path(key).expanduser()
    if path.is_file():
        return path
    raise ModelNotFound(f"{key!r} is neither a model name ({', '.join(MODELS)}) nor an existing file")
