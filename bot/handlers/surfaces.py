"""Slack's AI-app surfaces: the agent view (app_home_opened, tab messages), the older assistant
pane (assistant_thread_started), and the App Home tab. Bolt acks these before they run."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp

from bot.tutor import Tutor


def register(app: AsyncApp, tutor: Tutor) -> None:
    async def home_opened(event: dict[str, Any], body: dict[str, Any]) -> None:
        if event.get("tab") == "messages":
            # Agent view: prompts for the DM, without thread_ts.
            await tutor.welcome(
                team_id=_team(body), channel_id=str(event.get("channel") or ""), thread_ts=None
            )
        elif event.get("tab") == "home":
            await tutor.publish_home(team_id=_team(body), user_id=str(event.get("user") or ""))

    async def thread_started(event: dict[str, Any], body: dict[str, Any]) -> None:
        thread = event.get("assistant_thread") or {}
        await tutor.welcome(
            team_id=_team(body),
            channel_id=str(thread.get("channel_id") or ""),
            thread_ts=str(thread.get("thread_ts") or ""),
        )

    app.event("app_home_opened")(home_opened)
    app.event("assistant_thread_started")(thread_started)


def _team(body: dict[str, Any]) -> str:
    return str(body.get("team_id") or "")
