"""The Slack app manifest for `slack-tutor manifest` (YAML, per slack.md §9)."""

from __future__ import annotations

BOT_SCOPES = (
    "app_mentions:read",
    "assistant:write",
    "channels:history",
    "chat:write",
    "commands",
    "files:read",
    "files:write",
    "groups:history",
    "im:history",
    "reactions:write",
    "users:read",
)
BOT_EVENTS = ("app_home_opened", "app_mention", "message.channels", "message.groups", "message.im")


def manifest(public_url: str, *, name: str = "slack-tutor", socket_mode: bool = False) -> str:
    """A manifest whose single Request URL serves events, the /tutor command and interactivity."""
    url = public_url.rstrip("/") + "/slack/events"
    scopes = ", ".join(BOT_SCOPES)
    events = ", ".join(BOT_EVENTS)
    return f"""\
_metadata:
  major_version: 1
  minor_version: 1
display_information:
  name: {name[:35]}
  description: Math tutor and data visualizer. Mention me in a thread, DM me, or share a CSV/XLSX.
features:
  app_home:
    home_tab_enabled: true
    messages_tab_enabled: true
    messages_tab_read_only_enabled: false
  bot_user:
    display_name: tutor
    always_online: true
  agent_view:
    agent_description: Ask math questions, share CSV/XLSX files for charts, or upload a photo of a problem.
    suggested_prompts:
      - title: Solve an equation
        message: Solve 3x + 11 = 14 step by step
      - title: Explain with a plot
        message: Explain derivatives with a plot
      - title: Analyse my data
        message: Analyse a CSV I'll share
  shortcuts:
    - name: Reset tutor here
      type: message
      callback_id: tutor_reset_thread
      description: Make the tutor forget this thread's conversation and files
  slash_commands:
    - command: /tutor
      url: {url}
      description: Reset the tutor, pick a profile, or show help and status
      usage_hint: "help | reset | status | profile [math|data] | instructions <text> | auto on|off"
      should_escape: false
oauth_config:
  scopes:
    bot: [{scopes}]
settings:
  event_subscriptions:
    request_url: {url}
    bot_events: [{events}]
  interactivity:
    is_enabled: true
    request_url: {url}
  org_deploy_enabled: false
  socket_mode_enabled: {"true" if socket_mode else "false"}
  token_rotation_enabled: false
"""
