"""`superres` command line: one argparse subcommand per pipeline stage.

Each subcommand lives in the module that does the work; this file only lists them. A module named
here provides `add_<cmd>_arguments(parser)` and `run_<cmd>(args) -> int` (exit code). Modules are
imported only when their subcommand is named on the command line, so `superres upscale` does not
pay for the trainer's imports, and `superres --help` / `--version` import none of them (no torch).
"""
from __future__ import annotations

import argparse
import gc
import importlib
import logging
import sys

# name -> (module, one-paragraph help with an example)
COMMANDS: dict[str, tuple[str, str]] = {
    "upscale": ("superres.apps.upscale",
                "Upscale images with a trained generator. Example: superres upscale photo.jpg -o photo_x4.png"),
    "models": ("superres.apps.models",
               "List the models shipped with the package (name, scale, parameters, file)."),
    "analyze": ("superres.apps.analyze",
                "Estimate each image's noise level, JPEG quality, blockiness and detail (sharpness). "
                "Example: superres analyze photo.jpg scan.png --json analysis.json"),
    "eval": ("superres.apps.eval",
             "Benchmark models with the standard protocol (MATLAB bicubic LR, Y-channel PSNR/SSIM, "
             "NIQE). Example: superres eval --model psnr-x4 --model bicubic --data ../shared/data/benchmarks/Set5 --scale 4"),
    "prepare": ("superres.apps.prepare",
                "Cut large training images into overlapping sub-images. Example: superres prepare HR/ -o HR_sub/ --crop 480 --step 240"),
    "degrade": ("superres.apps.degrade",
                "Show what a training degradation does to an image. Example: superres degrade img.png -o lr.png --preset realistic --seed 3"),
    "train": ("superres.apps.train",
              "Train a generator (pixel loss, then adversarial). Example: superres train configs/tiny_cpu.toml --run-dir runs/tiny"),
    "export": ("superres.apps.export",
               "Export a training run or checkpoint as a .safetensors model (EMA generator + metadata). "
               "Example: superres export runs/tiny -o tiny.safetensors"),
    "serve": ("superres.apps.serve",
              "A web page and an HTTP API for upscaling (needs the [serve] extra). "
              "Example: superres serve --model gan-x4 --port 8000"),
    "interpolate": ("superres.apps.export",
                    "Blend two models of the same architecture (ESRGAN network interpolation). "
                    "Example: superres interpolate psnr.safetensors gan.safetensors --alpha 0.7 -o mix.safetensors"),
    "bench": ("superres.apps.bench",
              "Measure upscaling speed (end to end, model only, folder, a plain reference loop) against "
              "the FLOPs of the model and the conv peak of this machine; columns are explained in "
              "`superres bench --help`. Example: superres bench --model psnr-x4 --size 256x256 --json bench.json"),
}


def _module_for(name: str):
    return importlib.import_module(COMMANDS[name][0])


def _example(help_text: str) -> str | None:
    return help_text.split("Example: ", 1)[1] if "Example: " in help_text else None


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors end with an example line of the command."""

    example: str | None = None

    def error(self, message: str):
        self.print_usage(sys.stderr)
        tail = f"\nexample: {self.example}" if self.example else ""
        self.exit(2, f"{self.prog}: error: {message}{tail}\n")


def _command_in(argv: list[str]) -> str | None:
    """The subcommand named in argv (the first word that is not an option), if it is one of ours."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported to add its options (all of them when None).

    `superres --help`, `--version` and `superres upscale ...` thus import no module they do not need,
    and torch only where the command's module imports it at the top.
    """
    from .._version import __version__

    parser = _Parser(prog="superres",
                     description="GAN-based single-image super-resolution: upscale, train, evaluate.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"superres {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (modname, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text.split(". Example")[0], description=help_text,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.example = _example(help_text)
        if command is not None and name != command:
            continue   # listed in the help; its options are added only when it is the one asked for
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name != modname:
                raise
            continue  # a subcommand whose module is not in this build
        if hasattr(mod, f"add_{name}_arguments"):   # tests/test_cli.py asserts each one is wired up
            getattr(mod, f"add_{name}_arguments")(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = _command_in(argv)
    # no command named: only the top-level help or --version can answer, so no module is imported
    # ("" matches no command)
    parser = build_parser(command if command is not None else "")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.command:
        parser.print_help()
        return 2
    return int(getattr(_module_for(args.command), f"run_{args.command}")(args) or 0)


def run() -> None:
    """The `superres` command: main(), then exit without the interpreter's last garbage collections.

    At exit Python collects every generation again while it tears the modules down; with torch
    loaded that is hundreds of thousands of objects, 0.3-0.5 s of every command's wall time on a
    2-core VM (a 1280x800 photo: exit 0.54-0.84 s, 0.27-0.32 s with this). gc.freeze() moves the
    live objects out of the collector's reach first. Objects are still released by reference count
    and atexit handlers still run (Ray's shutdown among them); only the __del__ of objects held in
    reference cycles is skipped, which Python does not promise at exit anyway, and our files are
    written and closed (atomically) before main() returns. Not in main() itself: tests call it in
    one process many times.
    """
    rc = main()
    gc.freeze()
    sys.exit(rc)


if __name__ == "__main__":
    run()
