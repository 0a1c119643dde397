"""Command line: ``onestep distill | sample | export | eval | train-teacher | demo | pairs | objectives | keys``.

User errors print one line (``onestep: error: ...``) and exit 2; ``--debug`` shows the traceback.
Warnings are one line too. What a command does lives in ``commands.py``; this module parses.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from ..core.paths import USER_OS_ERRORS
from ..errors import OnestepError
from . import commands


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line, like every other error."""

    def error(self, message):
        raise OnestepError(f"{message} (see `{self.prog} --help`)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="onestep", description="Distill a diffusion model into a one-step generator.")
    _add_common(parser)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    p = sub.add_parser("distill", help="distill a teacher into a one-step generator")
    p.add_argument("--config", required=True, help="YAML config file (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.steps=100 (repeatable)")
    p.add_argument("--output", required=True, help="run directory")
    p.add_argument("--resume", choices=["latest"], help="continue from the run's latest checkpoint")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config and the memory per GPU it needs, and exit")
    p.add_argument("--processes", type=int, default=None, metavar="N",
                   help="with --dry-run: estimate memory for N processes (default: $WORLD_SIZE or 1)")
    p.add_argument("--attention", choices=["auto", "xformers", "flash", "efficient", "math"],
                   help="attention backend (overrides the config's attention key)")
    p.add_argument("--download", action="store_true",
                   help="data.dataset fashion-mnist: download it into the user cache if it is nowhere here")
    _add_common(p)

    p = sub.add_parser("sample", help="draw one-step samples from a run")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--ema", action="store_true", help="use the EMA generator")
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, help="FILE.npy (array) or FILE.png (image grid)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--class-label", type=int, action="append", default=None,
                   help="class label(s) for class-conditional runs (default: cycle over classes)")
    p.add_argument("--prompt", action="append", default=None,
                   help="prompt(s) for text-to-image runs (default: the run's prompts file)")
    p.add_argument("--nrow", type=int, default=None, help="images per row of a .png grid")
    _add_common(p)

    p = sub.add_parser("export", help="export a run as a diffusers pipeline directory")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--ema", action="store_true", help="export the EMA generator")
    p.add_argument("--output", required=True, help="pipeline directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export at --output")
    p.add_argument("--lora", action="store_true",
                   help="a LoRA run: write the generator's adapter as a diffusers LoRA for the base pipeline's "
                        "load_lora_weights (SD, SDXL, SD3, Flux), with its one-step scheduler")
    _add_common(p)

    p = sub.add_parser("eval", help="FID / KID / IS / precision-recall of a run or pipeline against a reference")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="a distillation run directory")
    src.add_argument("--pipeline", help="an exported pipeline directory")
    p.add_argument("--ref", required=True,
                   help="reference: digits, digits16, fashion-mnist (its test split), an image folder, .npy/.npz, "
                        "or a cached statistics name")
    p.add_argument("--ema", action="store_true", help="score the run's EMA generator")
    p.add_argument("--num-samples", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--metrics", default="fid,kid,isc,prc", help="comma-separated: fid, kid, isc, prc")
    p.add_argument("--features", choices=["inception", "digits", "fashion"], default=None,
                   help="feature network (default: digits for 8x8/16x16 grey images, fashion for 28x28 grey "
                        "images, inception otherwise)")
    p.add_argument("--download", action="store_true",
                   help="--ref fashion-mnist: download the data set into the user cache if it is nowhere here")
    p.add_argument("--inception-weights", default=None,
                   help="weights-inception-2015-12-05-6726825d.pth (default: $TORCH_HOME/hub/checkpoints)")
    p.add_argument("--cache-root", default=None, help="where reference statistics are cached")
    p.add_argument("--prompts", default=None, help="prompts file for text-to-image pipelines (cycled)")
    p.add_argument("--output", default=None, help="also write the results to this JSON file")
    _add_common(p)

    p = sub.add_parser("train-teacher", help="train a teacher (EDM loss) on a named data set as a diffusers pipeline")
    p.add_argument("--config", required=True,
                   help="YAML teacher-training config (configs/digits-teacher.yaml, configs/fashion-teacher.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--output", required=True, help="pipeline directory to write when training ends")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier teacher at --output")
    p.add_argument("--checkpoints", default=None, metavar="DIR",
                   help="checkpoints and log.jsonl (default: OUTPUT.training)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --checkpoints")
    p.add_argument("--download", action="store_true",
                   help="fashion-mnist: download the data set into the user cache if it is nowhere here")
    _add_common(p)

    p = sub.add_parser("demo", help="distill a bundled teacher, evaluate, export (make demo, make fashion)")
    p.add_argument("--preset", choices=["digits", "fashion"], default="digits",
                   help="digits (make demo: the 8x8 digits teacher) or fashion (make fashion: Fashion-MNIST)")
    p.add_argument("--output", default=None, help="default: runs/demo (digits), runs/fashion (fashion)")
    p.add_argument("--config", default=None, help="distillation config (default: the preset's bundled one)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--num-samples", type=int, default=None,
                   help="samples per FD evaluation (default: 1000 digits, 5000 fashion)")
    p.add_argument("--download", action="store_true",
                   help="fashion: download Fashion-MNIST into the user cache if it is nowhere here (needs network)")
    p.add_argument("--seed", type=int, default=0)
    _add_common(p)

    p = sub.add_parser("pairs", help="make a teacher's (noise, sample) pairs file once, for data.pairs")
    p.add_argument("--config", required=True, help="distillation config: its teacher, schedule, data.cache_size, "
                                                   "data.cache_steps, data.cache_batch and train.seed")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--output", required=True, help="the pairs file to write (.safetensors; never overwritten)")
    p.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32",
                   help="storage: fp16 halves the file (the noise is rounded before the teacher solves from it)")
    _add_common(p)

    sub.add_parser("objectives", help="list the registered objectives")
    sub.add_parser("keys", help="print every config key: what it accepts, its default, its meaning")
    return parser


COMMANDS = {"distill": commands.cmd_distill, "sample": commands.cmd_sample, "export": commands.cmd_export,
            "eval": commands.cmd_eval,
            "train-teacher": commands.cmd_train_teacher, "demo": commands.cmd_demo, "pairs": commands.cmd_pairs,
            "objectives": commands.cmd_objectives, "keys": commands.cmd_keys}


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings in one line: ours as ``onestep: warning: ...``, others with their category."""
    ours = category.__module__.startswith("onestep")
    return f"onestep: warning: {message}\n" if ours else f"{category.__name__}: {message}\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    warnings.formatwarning = _format_warning
    debug = "--debug" in argv or os.environ.get("ONESTEP_DEBUG") == "1"
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            raise OnestepError("no command given; one of: " + ", ".join(COMMANDS) + " (see `onestep --help`)")
        return COMMANDS[args.command](args)
    except OnestepError as exc:
        if debug:
            raise
        print(f"onestep: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `onestep keys | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        if debug or exc.errno not in USER_OS_ERRORS:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        print(f"onestep: error: cannot write{where}: {exc.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("onestep: interrupted; resume with --resume latest", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
