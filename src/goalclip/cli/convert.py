"""``goalclip convert``: import checkpoints from other layouts (Long-CLIP / OpenAI -> transformers)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    convert = sub.add_parser("convert", help="import checkpoints from other layouts")
    convert_sub = convert.add_subparsers(dest="convert_command", required=True)
    help_text = "convert a Long-CLIP (OpenAI-layout) checkpoint into a transformers CLIPModel folder"
    parser = convert_sub.add_parser("longclip", help=help_text, description=help_text)
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
    parser.set_defaults(func=run)


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
