"""`illume chat`: a conversation with a trained pipeline in the terminal: text, images to look at,
drawings and edits in one conversation (IllumePipeline.chat)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .tasks import add_placement, placement

HELP = """Type a message and press Enter. Commands:
  /image PATH   attach an image to your next message (it looks at it, or edits it)
  /reset        start a new conversation
  /quit         leave (so does Ctrl-D)
Drawings are saved as PNGs in the --out folder."""


def register(commands: argparse._SubParsersAction) -> None:
    chat = commands.add_parser(
        "chat",
        help="talk with a trained pipeline in the terminal (text, images, drawings, edits)",
    )
    chat.add_argument("--model", required=True, help="pipeline directory (e.g. DEMO_OUT/pipeline)")
    add_placement(chat)
    chat.add_argument(
        "--seed", type=int, default=0, help="seed of the first drawing (then +1 each)"
    )
    chat.add_argument(
        "--max-new-tokens", type=int, default=64, help="longest text answer, in tokens"
    )
    chat.add_argument("--out", default="chat-images", help="folder the drawings are saved in")
    chat.set_defaults(handler=_chat)


def _chat(args: argparse.Namespace) -> int:
    from illume_core import Message, atomic_write_bytes, load_image

    from .tasks import UsageError, _png

    if not Path(args.model).is_dir():
        raise UsageError(f"--model {args.model}: no such pipeline directory")
    if not 0 <= args.seed < 2**63:
        raise UsageError(f"--seed must be in [0, 2**63), got {args.seed}")
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; name a folder")
    place = placement(args)
    from ..pipeline import IllumePipeline

    pipe = IllumePipeline.from_pretrained(args.model, *place)
    print(HELP, flush=True)
    messages: list = []
    attached: list = []
    seed, drawn = args.seed, 0
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/reset":
            messages, attached = [], []
            print("(a new conversation)")
            continue
        if line.startswith("/image"):
            path = line.removeprefix("/image").strip()
            try:
                attached.append(load_image(path))
            except (ValueError, OSError) as err:  # a bad path loses nothing said so far
                print(f"(not attached: {err})")
                continue
            print(f"(attached {path}; it goes with your next message)")
            continue
        if line.startswith("/"):
            print(f"(unknown command {line.split()[0]}; {HELP.splitlines()[1].strip()} ...)")
            continue
        messages.append(Message("user", [*attached, line]))
        attached = []
        answer = pipe.chat(messages, seed=seed, max_new_tokens=args.max_new_tokens)
        if isinstance(answer, str):
            print(f"illume> {answer}", flush=True)
            messages.append(Message("assistant", answer))
            continue
        out.mkdir(parents=True, exist_ok=True)
        drawn += 1
        path = out / f"drawing-{drawn:03d}.png"
        while path.exists():  # never overwrite what an earlier chat saved
            drawn += 1
            path = out / f"drawing-{drawn:03d}.png"
        atomic_write_bytes(path, _png(answer))
        print(f"illume> [drew {path}]", flush=True)
        # in the conversation the drawing is what the model drew: its codes, made once
        messages += pipe.drawings_as_codes([Message("assistant", [answer])])
        seed += 1
