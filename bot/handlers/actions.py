"""Interactivity: buttons on the tutor's messages, and the "Reset tutor here" message shortcut."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.respond.async_respond import AsyncRespond

from bot.reply import ANALYSE_ACTION, START_OVER_ACTION
from bot.tutor import Tutor

RESET_SHORTCUT = "tutor_reset_thread"


def _team(body: dict[str, Any]) -> str:
    return str((body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id") or "")


def _user(body: dict[str, Any]) -> str:
    return str((body.get("user") or {}).get("id") or "")


def register(app: AsyncApp, tutor: Tutor) -> None:
    async def analyse(
        ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], respond: AsyncRespond
    ) -> None:
        channel_id, _, thread_ts = str(action.get("value") or "").partition(":")
        container = body.get("container") or {}
        names = await tutor.start_analysis(
            team_id=_team(body),
            channel_id=channel_id or str(container.get("channel_id") or ""),
            thread_ts=thread_ts or str(container.get("thread_ts") or ""),
            user_id=_user(body),
            offer_ts=str(container.get("message_ts") or action.get("action_ts") or ""),
        )
        await ack()
        if names is not None:
            listed = ", ".join(f"`{name}`" for name in names) or "your file"
            await respond(replace_original=True, text=f"On it: analysing {listed}…")

    async def start_over(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        channel_id, _, thread_key = str(action.get("value") or "").partition(":")
        container = body.get("container") or {}
        await tutor.request_thread_reset(
            team_id=_team(body),
            channel_id=channel_id or str(container.get("channel_id") or ""),
            thread_key=thread_key,
            user_id=_user(body),
            # The answer's ts: pressing the same button twice resets once.
            key_ts=str(container.get("message_ts") or action.get("action_ts") or ""),
        )
        await ack()

    async def reset_here(ack: AsyncAck, shortcut: dict[str, Any], respond: AsyncRespond) -> None:
        message = shortcut.get("message") or {}
        channel_id = str((shortcut.get("channel") or {}).get("id") or "")
        thread_key = str(message.get("thread_ts") or message.get("ts") or "")
        if channel_id.startswith("D") and not message.get("thread_ts"):
            thread_key = ""
        started = await tutor.request_thread_reset(
            team_id=_team(shortcut),
            channel_id=channel_id,
            thread_key=thread_key,
            user_id=_user(shortcut),
            key_ts=str(shortcut.get("action_ts") or message.get("ts") or ""),
        )
        await ack()
        if not started:
            await respond(response_type="ephemeral", text="That message isn't in a tutor thread.")

    app.action(ANALYSE_ACTION)(analyse)
    app.action(START_OVER_ACTION)(start_over)
    app.shortcut(RESET_SHORTCUT)(reset_here)
