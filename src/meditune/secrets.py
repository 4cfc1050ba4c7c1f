"""Keeping secrets (API keys) out of logs, manifests and error messages, and off the network in clear."""

from __future__ import annotations

import ipaddress

MIN_FRAGMENT = 8  # a key fragment this long is masked wherever it appears
MASK = "***"


def mask_secret(text: str, secret: str | None, min_fragment: int = MIN_FRAGMENT) -> str:
    """`text` with every substring of `secret` that is `min_fragment` characters or longer replaced by ***
    (a server that echoes part of a key must not get that part into a log or manifest)."""
    if not secret or not text:
        return text
    k = min(min_fragment, len(secret))
    hidden = [False] * len(text)
    # every long enough common substring contains a k-character window of the secret: mark all windows' hits
    for i in range(len(secret) - k + 1):
        window = secret[i:i + k]
        start = text.find(window)
        while start != -1:
            for j in range(start, start + k):
                hidden[j] = True
            start = text.find(window, start + 1)
    if not any(hidden):
        return text
    out, i = [], 0
    while i < len(text):
        if hidden[i]:
            while i < len(text) and hidden[i]:
                i += 1
            out.append(MASK)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine: a key sent there, or a server bound there,
    stays off the network."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
