"""The `/tutor` slash command. Slack sends no thread with it: it acts on the channel or DM."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck

from bot.tutor import Tutor

HELP = """\
*Your tutor* answers math questions and analyses data, in threads.
• Ask: `@tutor I need to solve 3x + 11 = 14. Can you help me?` — it answers in the thread and remembers it.
• Data: share a CSV or XLSX with a mention (or press *Analyse it* on my offer) to get charts back.
• `/tutor auto on|off` — analyse spreadsheets shared in this channel without asking first."""


def register(app: AsyncApp, tutor: Tutor) -> None:
    async def tutor_command(ack: AsyncAck, command: dict[str, Any]) -> None:
        words = str(command.get("text") or "").split()
        sub = words[0].lower() if words else "help"
        team_id = str(command.get("team_id") or "")
        channel_id = str(command.get("channel_id") or "")
        if sub == "auto" and len(words) == 2 and words[1].lower() in ("on", "off"):
            on = words[1].lower() == "on"
            await tutor.set_auto_analysis(team_id=team_id, channel_id=channel_id, on=on)
            await ack(
                text="Spreadsheets shared here will be analysed without asking first."
                if on
                else "I'll ask before analysing spreadsheets shared here."
            )
            return
        prefix = "" if sub == "help" else f"unknown command: {sub}\n\n"
        await ack(text=prefix + HELP)

    app.command("/tutor")(tutor_command)
