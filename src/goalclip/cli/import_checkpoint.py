"""``goalclip import-checkpoint``: import checkpoints from other layouts (Long-CLIP / OpenAI -> transformers).

Its old name, ``goalclip convert``, read too much like ``goalclip data convert`` (datasets to
manifests); it stays as an alias that prints a one-line deprecation note.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

DEPRECATED_NOTE = "goalclip convert longclip is deprecated: use goalclip import-checkpoint longclip (same flags)"


def add_parser(sub: argparse._SubParsersAction) -> None:
    _add_command(sub, "import-checkpoint", "import a checkpoint from another layout into a transformers folder", run)
    _add_command(sub, "convert", "old name of import-checkpoint (deprecated)", run_deprecated)


def _add_command(sub: argparse._SubParsersAction, name: str, help_text: str,
                 func: Callable[[argparse.Namespace], str]) -> None:
    """One name of the command, with its ``longclip`` subcommand."""
    command = sub.add_parser(name, help=help_text, description=help_text)
    command_sub = command.add_subparsers(dest="import_command", required=True)
    longclip_help = "convert a Long-CLIP (OpenAI-layout) checkpoint into a transformers CLIPModel folder"
    parser = command_sub.add_parser("longclip", help=longclip_help, description=longclip_help)
    parser.add_argument(
        "--checkpoint", required=True,
        help="Long-CLIP (or any OpenAI-layout ViT CLIP) checkpoint file: .pt/.pth/.bin/.safetensors",
    )
    parser.add_argument(
        "--processor", required=True,
        help="hub id or folder whose tokenizer and image processor the checkpoint was trained with "
        "(LongCLIP-L: openai/clip-vit-large-patch14; LongCLIP-B: openai/clip-vit-base-patch16)",
    )
    parser.add_argument("--out", required=True,
                        help="output folder loadable by CLIPModel/AutoProcessor.from_pretrained")
    parser.add_argument(
        "--heads", type=int, default=None,
        help="attention heads in both towers (default: width // 64, right for every OpenAI and Long-CLIP model)",
    )
    parser.add_argument(
        "--keep", type=int, default=None,
        help="Long-CLIP mask boundary: text positions below it come from positional_embedding, the "
        "rest from positional_embedding_res (default: 20, as in every released Long-CLIP)",
    )
    parser.set_defaults(func=func)


def run(args: argparse.Namespace) -> str:
    from goalclip.models.clip import read_state_dict, save_clip
    from goalclip.models.convert import convert_openai_state_dict

    keep = {} if args.keep is None else {"longclip_keep": args.keep}
    bundle = convert_openai_state_dict(read_state_dict(args.checkpoint), tokenizer_source=args.processor,
                                       text_heads=args.heads, vision_heads=args.heads, **keep)
    out = save_clip(bundle, args.out)
    vision = bundle.model.config.vision_config
    return (f"converted {args.checkpoint} -> {out} (ViT {vision.num_hidden_layers}x{vision.hidden_size}/"
            f"{vision.patch_size} at {vision.image_size}px, text context {bundle.max_text_len})")


def run_deprecated(args: argparse.Namespace) -> str:
    """``goalclip convert longclip``: the same run, after the note that names the new command."""
    print(DEPRECATED_NOTE, file=sys.stderr)
    return run(args)
