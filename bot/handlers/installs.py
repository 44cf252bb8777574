"""A workspace leaving: `app_uninstalled`, and `tokens_revoked` when its bot token is among them.
Bolt runs these without `authorize` (the token is already dead) and acks them first."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp

from bot.tutor import Tutor


def register(app: AsyncApp, tutor: Tutor) -> None:
    async def uninstalled(body: dict[str, Any]) -> None:
        await tutor.workspace_uninstalled(team_id=str(body.get("team_id") or ""))

    async def revoked(event: dict[str, Any], body: dict[str, Any]) -> None:
        tokens = event.get("tokens")
        if isinstance(tokens, dict) and tokens.get("bot"):  # user tokens alone: the bot stays
            await tutor.workspace_uninstalled(team_id=str(body.get("team_id") or ""))

    app.event("app_uninstalled")(uninstalled)
    app.event("tokens_revoked")(revoked)
