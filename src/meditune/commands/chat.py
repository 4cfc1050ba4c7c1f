"""`meditune chat [MODEL]`: talk to a model in the terminal."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

console = Console()


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)


def chat(
    model: str = typer.Argument("default", help="Model spec: default | file.gguf | directory | org/name."),
    system: str = typer.Option(None, "--system", help="System prompt (default: none, not the template's)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
) -> None:
    """Interactive chat. Commands: /reset clears the history, /exit (or Ctrl-D) quits."""
    import torch

    from meditune.chat import render_chat
    from meditune.models import load_model

    with console.status(f"loading {escape(model)} ..."):
        lm, tok = load_model(model, trust_remote_code=trust_remote_code)
    console.print(f"[bold]{escape(model)}[/] ready. /reset clears the history, /exit quits.")
    history: list[dict[str, str]] = []
    while True:
        try:
            user = console.input("[bold cyan]you>[/] ")
        except EOFError:
            break
        if user.strip() in ("/exit", "/quit"):
            break
        if user.strip() == "/reset":
            history = []
            console.print("(history cleared)")
            continue
        if not user.strip():
            continue
        history.append({"role": "user", "content": user})
        prompt = render_chat(tok, history, system_prompt=system)
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False).to(lm.device)
        gen_kwargs = {"max_new_tokens": max_new_tokens, "pad_token_id": tok.pad_token_id}
        if temperature > 0:
            gen_kwargs.update(do_sample=True, temperature=temperature, top_p=0.9)
        else:
            gen_kwargs.update(do_sample=False)
        with torch.no_grad():
            out = lm.generate(**enc, **gen_kwargs)
        reply = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        history.append({"role": "assistant", "content": reply})
        console.print("[bold green]model>[/] ", end="")
        console.print(reply, highlight=False, markup=False)
