"""The App Home tab: what the tutor is, how to use it, and the user's recent tutor threads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

INTRO = (
    "*Your tutor* answers math questions and analyses data, right in Slack threads. "
    "It writes and runs Python to check its work and posts the charts it draws."
)
HOW_TO = "\n".join(
    (
        "• *Ask:* `@tutor I need to solve 3x + 11 = 14. Can you help me?` — the answer comes in the thread,",
        "  and every later message in that thread is answered with the thread's context.",
        "• *Share data:* upload a CSV or XLSX with a mention (or press *Analyse it* on my offer)",
        "  to get charts back.",
        "• *DM me* for a private conversation; a photo of a worksheet works too.",
        "• *Start over:* `@tutor reset` in a thread, the *Start over* button,",
        "  or `/tutor reset` for a whole channel.",
        "• `/tutor help` shows everything, including profiles and custom instructions for a channel.",
    )
)


def home_view(threads: Sequence[tuple[str, str | None]]) -> dict[str, Any]:
    """A `home` view; `threads` are (channel id, permalink or None), most recent first."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": "Your tutor"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": INTRO}},
        {"type": "section", "text": {"type": "mrkdwn", "text": HOW_TO}},
        {"type": "divider"},
        {"type": "header", "text": {"type": "plain_text", "text": "Your recent tutor threads"}},
    ]
    if not threads:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": "_None yet: ask me something!_"}}
        )
    for channel_id, link in threads:
        where = f"<#{channel_id}>" if channel_id.startswith(("C", "G")) else "our DM"
        text = f"<{link}|Thread in {where}>" if link else f"Conversation in {where}"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"• {text}"}})
    return {"type": "home", "blocks": blocks}
