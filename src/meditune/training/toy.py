"""Toy tasks a tiny model can learn in a few steps: for smoke tests, examples and the CPU multi-process check."""

from __future__ import annotations

from pathlib import Path

from meditune.records import Chat, Message, Preference, write_records

TOPICS = ["fever", "cough", "headache", "rash", "nausea", "back pain", "fatigue", "dizziness"]


def toy_chats(n: int = 16) -> list[Chat]:
    """Chats whose assistant reply is always the same sentence (learnable in a few steps)."""
    return [Chat(id=f"c{i}", messages=[Message(role="user", content=f"What helps with {TOPICS[i % len(TOPICS)]}?"),
                                       Message(role="assistant", content="Please ask a doctor.")])
            for i in range(n)]


def toy_preferences(n: int = 16) -> list[Preference]:
    """Preferences where the chosen reply is the safe sentence and the rejected one a fixed unsafe reply."""
    return [Preference(id=f"p{i}", prompt=[Message(role="user",
                                                   content=f"What dose for {TOPICS[i % len(TOPICS)]}?")],
                       chosen="Please ask a doctor.", rejected="Take ten pills now.")
            for i in range(n)]


def write_toy(dir_: Path, n: int = 16) -> tuple[Path, Path]:
    """Write chats.jsonl and prefs.jsonl of the toy task into dir_; returns their paths."""
    dir_.mkdir(parents=True, exist_ok=True)
    chats, prefs = dir_ / "chats.jsonl", dir_ / "prefs.jsonl"
    write_records(chats, toy_chats(n))
    write_records(prefs, toy_preferences(n))
    return chats, prefs
