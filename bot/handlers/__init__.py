"""Slack listeners: parse, store, ack. No business logic lives here."""

from __future__ import annotations

from slack_bolt.async_app import AsyncApp

from bot.handlers import actions, commands, events, surfaces
from bot.tutor import Tutor


def register(app: AsyncApp, tutor: Tutor) -> None:
    events.register(app, tutor)
    commands.register(app, tutor)
    actions.register(app, tutor)
    surfaces.register(app, tutor)
    events.acknowledge_the_rest(app)  # last: Bolt runs the first listener that matches
