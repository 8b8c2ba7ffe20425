"""``goalclip serve``: a local web page to search, see where each sentence lands, page through pairs, plot runs."""

from __future__ import annotations

import argparse
import ipaddress

from goalclip.demo.layout import served_views
from goalclip.cli.common import add_device, add_max_image_pixels, positive_int, resolve_device


def add_parser(sub: argparse._SubParsersAction) -> None:
    help_text = "a local web page: search, where each sentence lands, mined pairs, training runs (goalclip[app])"
    parser = sub.add_parser("serve", help=help_text, description=help_text + ". Any view can be left out.")
    parser.add_argument("--model", action="append", default=[],
                        help="model to search with (hub id, folder, or state-dict file with --base); "
                        "repeat once to compare two models side by side")
    parser.add_argument("--base", default=None, help="base model id/folder when --model is a bare state-dict file")
    gallery = parser.add_mutually_exclusive_group()
    gallery.add_argument("--images", default=None,
                         help="folder of images to search; the same cached index as goalclip search "
                         "(DIR/.goalclip-index)")
    gallery.add_argument("--data", default=None,
                         help="or a manifest (JSON Lines with 'image') whose images are searched; indexed in "
                         "the folder holding them, apart from that folder's own index")
    parser.add_argument("--index-dir", default=None, help="where to keep the index (default: DIR/.goalclip-index)")
    parser.add_argument("--pairs", default=None, help="mined-pairs manifest (goalclip mine --out) to page through")
    parser.add_argument("--runs", nargs="+", default=[], help="training run folders (goalclip train --out) to plot")
    parser.add_argument("--evals", nargs="+", default=[], metavar="FILE",
                        help="goalclip eval --out files kept outside the run folders: each row shows beside the run "
                        "whose folder is its model (eval files inside a run folder show without this)")
    parser.add_argument("--demo", default=None, metavar="DIR",
                        help="a finished goalclip demo --out folder: its pretrained and goal models side by side over "
                        "its test images, at the context its evaluation used; its mined training pairs; its "
                        "training runs with its evaluation (--model, --pairs, --runs, --evals, --context given as "
                        "well take precedence)")
    parser.add_argument("--context", type=positive_int, default=None,
                        help="read queries at this many text positions: a model with a shorter context is "
                        "stretched first, as goalclip eval --context does (default: each model's own context)")
    parser.add_argument("--keep-positions", type=positive_int, default=None,
                        help="with --context: leading positions the stretch copies unchanged (default: 20)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port; 0 picks a free one (default: 7860)")
    add_device(parser)
    add_max_image_pixels(parser)
    parser.set_defaults(func=run)


def _loopback(host: str) -> str:
    """Only loopback addresses: the page serves local files and has no authentication."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"--host {host}: only loopback addresses (127.0.0.1, ::1) are served; the page reads local "
                         "files and has no login (reach it remotely through an SSH tunnel)")
    return "127.0.0.1" if host == "localhost" else host


def _with_demo(args: argparse.Namespace) -> None:
    """Fill the flags the user left out from ``--demo DIR``."""
    if args.images or args.data:
        raise ValueError("--demo serves the demo's own test images; leave out --images and --data")
    views = served_views(args.demo)
    args.data = views["data"]
    for name in ("model", "runs", "evals"):
        setattr(args, name, getattr(args, name) or views[name])
    for name in ("pairs", "context", "keep_positions"):
        if getattr(args, name) is None:
            setattr(args, name, views[name])


def run(args: argparse.Namespace) -> str:
    """Start loading the models in the background, print the URL, serve until interrupted."""
    host = _loopback(args.host)
    if args.demo:
        _with_demo(args)
    if len(args.model) > 2:
        raise ValueError(f"--model: at most two models side by side, got {len(args.model)}")
    if args.model and not (args.images or args.data):
        raise ValueError("--model needs --images DIR or --data MANIFEST (the images to search)")
    try:
        from goalclip.app.server import make_state, serve
    except ImportError as exc:
        raise RuntimeError(f"goalclip serve needs the app extra: pip install 'goalclip[app]' ({exc})") from None
    from goalclip.core.images import set_max_image_pixels

    set_max_image_pixels(args.max_image_pixels)
    state = make_state(args.model, args.images, data=args.data, base=args.base, device=resolve_device(args.device),
                       index_dir=args.index_dir, pairs=args.pairs, runs=args.runs, evals=args.evals,
                       context=args.context, keep_positions=args.keep_positions or 20)
    serve(state, host, args.port, ready=lambda url: print(f"goalclip serve: open {url} (Ctrl-C stops)", flush=True))
    return "serve: stopped"
