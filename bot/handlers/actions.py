"""Interactivity: buttons on the tutor's messages."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.respond.async_respond import AsyncRespond

from bot.reply import ANALYSE_ACTION
from bot.tutor import Tutor

log = logging.getLogger(__name__)


def register(app: AsyncApp, tutor: Tutor) -> None:
    async def analyse(
        ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], respond: AsyncRespond
    ) -> None:
        channel_id, _, thread_ts = str(action.get("value") or "").partition(":")
        container = body.get("container") or {}
        names = await tutor.start_analysis(
            team_id=str((body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id") or ""),
            channel_id=channel_id or str(container.get("channel_id") or ""),
            thread_ts=thread_ts or str(container.get("thread_ts") or ""),
            user_id=str((body.get("user") or {}).get("id") or ""),
            offer_ts=str(container.get("message_ts") or action.get("action_ts") or ""),
        )
        await ack()
        if names is not None:
            listed = ", ".join(f"`{name}`" for name in names) or "your file"
            await respond(replace_original=True, text=f"On it: analysing {listed}…")

    app.action(ANALYSE_ACTION)(analyse)
