"""Command line: `python -m conversion {import,export,verify,compose-stage1} ...`.

python -m conversion import f1 --input DIR_OR_model.safetensors --output OUT
python -m conversion import pi0 --input pi0/model.safetensors --output OUT [--size full]
python -m conversion import openpi --input .../pi0_base/params --output OUT
python -m conversion import paligemma --input paligemma-3b-pt-224/ --output OUT
python -m conversion import var-vae --input vae_ch160v4096z32.pth --output OUT
python -m conversion compose-stage1 --pi0 PI0 --vae VAE.pth --output OUT [--seed 0]
python -m conversion export --input OUT --output F1_DIR [--with-expert-lm-heads]
python -m conversion export --run WORKDIR [--step N] [--ema] [--dataset NAME] --output F1_DIR
    [--dtype float32|released] [--tokenizer PATH]
python -m conversion verify SOURCE --input PATH [--size full] [--forward]

Paths may be URIs (gs://bucket/...): remote inputs are staged under $TMPDIR, outputs are written
locally and copied to the URI at the end.
"""

import argparse
import json
import logging
import sys

from conversion import exporter, importers, verification
from conversion.io import ConversionError

SOURCES = ("f1", "pi0", "openpi", "paligemma", "var-vae")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m conversion",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    size_help = (
        "our model size the foreign tensors must fit (f1_jax/models/sizes.py): full, small, tiny"
    )

    imp = sub.add_parser("import", help="foreign checkpoint -> Orbax params of ours")
    imp.add_argument("source", choices=SOURCES)
    imp.add_argument("--input", required=True)
    imp.add_argument("--output", required=True)
    imp.add_argument("--config", help="f1 only: the official config.json (default: beside input)")
    imp.add_argument("--size", default="full", help=size_help + " (ignored for f1)")

    exp = sub.add_parser("export", help="a run or an import of ours -> official F1 layout")
    what = exp.add_mutually_exclusive_group(required=True)
    what.add_argument("--input", help="a directory written by `import` or `compose-stage1`")
    what.add_argument(
        "--run",
        help="a training run's workdir (or its checkpoints/ dir); also writes norm_stats.json, "
        "tokenizer.model and <dataset>_stats.json",
    )
    exp.add_argument("--output", required=True)
    exp.add_argument("--step", type=int, help="--run: the checkpoint step (default: the latest)")
    exp.add_argument("--ema", action="store_true", help="--run: export the EMA parameters")
    exp.add_argument(
        "--dataset",
        help="--run: the default dataset of norm_stats.json (default: the mixture's first)",
    )
    exp.add_argument(
        "--tokenizer",
        help="--run: the SentencePiece model to ship (default: the run's data.tokenizer_path)",
    )
    exp.add_argument(
        "--dtype",
        choices=exporter.EXPORT_DTYPES,
        default="float32",
        help="float32 (default): every tensor fp32, the export computes exactly what was "
        "trained; released: the released file's dtypes (bf16 PaliGemma and expert layers)",
    )
    exp.add_argument(
        "--with-expert-lm-heads",
        action="store_true",
        help="also write the unused generation/action expert lm_heads (zeros), as the "
        "released file has them",
    )

    ver = sub.add_parser("verify", help="round trip (and forward parity) of a foreign checkpoint")
    ver.add_argument("source", choices=SOURCES)
    ver.add_argument("--input", required=True)
    ver.add_argument("--size", default="full", help=size_help)
    ver.add_argument(
        "--forward",
        action="store_true",
        help="also compare PaliGemma image features and text hidden states against "
        "transformers (needs torch + transformers; f1, pi0, paligemma)",
    )

    comp = sub.add_parser("compose-stage1", help="pi0 + VAR VQ-VAE + fresh generation expert")
    comp.add_argument("--pi0", required=True)
    comp.add_argument("--vae", required=True)
    comp.add_argument("--output", required=True)
    comp.add_argument("--size", default="full", help=size_help)
    comp.add_argument("--seed", type=int, default=0)
    for command in (imp, exp, ver, comp):
        command.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _import(args, progress: bool):
    if args.source == "f1":
        return importers.import_f1(args.input, args.output, args.config, progress)
    fn = {
        "pi0": importers.import_pi0,
        "openpi": importers.import_openpi,
        "paligemma": importers.import_paligemma,
        "var-vae": importers.import_var_vae,
    }[args.source]
    return fn(args.input, args.output, args.size, progress)


def _verify(args, progress: bool) -> dict:
    diffs = verification.verify_roundtrip(args.source, args.input, size=args.size, progress=progress)
    report = {
        "tensors": len(diffs),
        "max_abs_diff": max(diffs.values(), default=0.0),
        "per_tensor": diffs,
    }
    if args.forward:
        report["forward"] = verification.verify_forward(
            args.source, args.input, size=args.size, progress=progress
        )
    return report


def _export(args, progress: bool):
    if args.run is not None:
        return exporter.export_run(
            args.run,
            args.output,
            step=args.step,
            use_ema=args.ema,
            dataset=args.dataset,
            dtype=args.dtype,
            with_expert_lm_heads=args.with_expert_lm_heads,
            tokenizer=args.tokenizer,
            progress=progress,
        )
    return exporter.export_f1(
        args.input, args.output, args.with_expert_lm_heads, progress, dtype=args.dtype
    )


class _Stderr(logging.Handler):
    """Writes the library's log records to the current sys.stderr (looked up at each record)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def _show_notes() -> None:
    """The conversion library logs its notes; the command shows them on stderr."""
    logger = logging.getLogger("conversion")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        logger.addHandler(_Stderr())
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "export" and args.input is not None:
        given = [f"--{n}" for n in ("step", "dataset", "tokenizer") if getattr(args, n) is not None]
        given += ["--ema"] if args.ema else []
        if given:
            parser.error(f"{', '.join(given)} only apply to --run (not to --input)")
    progress = not args.no_progress and sys.stderr.isatty()
    _show_notes()
    try:
        if args.command == "import":
            out = _import(args, progress)
            print(json.dumps({"written": str(out)}))
        elif args.command == "export":
            out = _export(args, progress)
            print(json.dumps({"written": str(out)}))
        elif args.command == "compose-stage1":
            out = importers.compose_stage1(
                args.pi0, args.vae, args.output, args.size, args.seed, progress
            )
            print(json.dumps({"written": str(out)}))
        else:
            print(json.dumps(_verify(args, progress), indent=1))
    except ConversionError as e:
        print(f"error: {e}\nNothing was written.", file=sys.stderr)
        return 2
    return 0
