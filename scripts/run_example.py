"""Run the example txt2img workflow on a headless ComfyUI with this pack; print where the PNG is.

Run by scripts/run_example.sh, or in the host's Python from the repository root: python -m scripts.run_example
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import warnings
from pathlib import Path

# The host loads the pack from this checkout (a link in custom_nodes/): keep bytecode caches out of
# it as well, in this process and in the server it starts.
sys.dont_write_bytecode = True
os.environ["PYTHONDONTWRITEBYTECODE"] = "1"

from devkit import host  # noqa: E402
from devkit.client import ComfyClient  # noqa: E402
from devkit.graphs import txt2img_prompt  # noqa: E402

# Outside the repository, next to the host: the main job never writes into the source tree.
DEFAULT_OUT = host.HOME / "output"


@contextlib.contextmanager
def _quiet_model_factory():
    """Hide what the tiny model factory makes transformers and diffusers print: notices about torchvision
    and an old scheduler config (both moot for a random-weight model) and save progress bars."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = transformers_logging.get_verbosity(), diffusers_logging.get_verbosity()
    for library in (transformers_logging, diffusers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"(?s).*steps_offset", category=FutureWarning)
            yield
    finally:
        for library, level in zip((transformers_logging, diffusers_logging), levels, strict=True):
            library.set_verbosity(level)
            library.enable_progress_bar()


def _checkpoint(args) -> tuple[str, int]:
    """(ckpt_name in the checkpoints folder, image size): a real sd_turbo, or the embedded default."""
    folder = host.BASE_DIR / "models" / "checkpoints"
    real = Path(args.ckpt or os.environ.get("ADD_TURBO_CKPT", folder / "sd_turbo.safetensors"))
    if real.exists():
        if real.parent.resolve() != folder.resolve():
            shutil.copy(real, folder / real.name)
        return real.name, 512
    print(f"no real checkpoint at {real}: building the embedded tiny random-weight SD-Turbo model "
          "(the image will be noise-like; put sd_turbo.safetensors there for a real one)")
    sys.path[:0] = [str(host.COMFY_DIR)]
    from devkit import turbo_models

    with _quiet_model_factory():
        model = turbo_models.build("sd_turbo")
    target = folder / model.single_file.name
    if not target.exists():
        shutil.copy(model.single_file, target)
    return target.name, 256


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ckpt", help="path of an SD-Turbo single-file checkpoint")
    parser.add_argument("--prompt", default="a cinematic photo of a red fox in the snow, golden hour")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"folder for the PNG (default: {DEFAULT_OUT})")
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()

    ckpt_name, size = _checkpoint(args)
    server = host.start_server()
    try:
        with ComfyClient(server.url) as client:
            run = client.run(txt2img_prompt(ckpt_name, args.prompt, args.seed, args.steps, size,
                                            prefix="add_turbo_example"))
            if run.error:
                print(f"error: {run.error['exception_message']}", file=sys.stderr)
                return 1
            out = args.out
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"add_turbo_example_seed{args.seed}.png"
            path.write_bytes(client.images(run.prompt_id)[0])
        print(f"wrote {path} ({size}x{size}, {args.steps} step(s), checkpoint {ckpt_name})")
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
