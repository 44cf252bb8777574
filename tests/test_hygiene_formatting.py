"""Whatever the model writes, the tutor's answer never pings a channel or disguises a link."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from bot.formatting import format_reply, markdown_to_mrkdwn
from tests.conftest import Bot
from tests.fakes import Turn
from tests.slack_payloads import CHANNEL, mention, new_ts

BROADCASTS = "<!channel> <!here> <!everyone> <!subteam^S0ADMINS>"
#: "@" and a word joiner: reads as "@", but Slack's automatic parsing can't make a mention of it.
INERT_AT = "@\u2060"
LIVE = re.compile(r"<!(?:channel|here|everyone|subteam\^)", re.I)
PLAIN_BROADCAST = re.compile(r"(?<![\w@])@(?:channel|here|everyone|S0ADMINS)\b", re.I)
#: A Slack link token: <target|label>.
LINK = re.compile(r"<((?:https?|ftp|mailto|tel):[^|<>]*)\|([^<>]*)>", re.I)
URLISH = re.compile(r"(?i)(?:[a-z][a-z0-9+.\-]*:/*)?(?:[\w\-]+\.)+[a-z]{2,}\S*")


def _norm(url: str) -> str:
    url = re.sub(r"(?i)^(?:[a-z][a-z0-9+.\-]*:)?/*", "", url.replace("&amp;", "&")).rstrip("/")
    return url.lower().removeprefix("www.")


def disguised_links(mrkdwn: str) -> list[tuple[str, str]]:
    """Links whose label names another address than the one they go to."""
    return [
        (target, label)
        for target, label in LINK.findall(mrkdwn)
        if URLISH.search(label) and _norm(label) != _norm(target)
    ]


def _all_text(posted: list[dict[str, Any]]) -> str:
    return "\n".join(
        p.get("text", "") + json.dumps(p.get("blocks") or [], ensure_ascii=False) for p in posted
    )


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("hi <!here> & bye", "hi @\u2060here &amp; bye"),
        ("<!channel>", "@\u2060channel"),
        ("<!everyone> look", "@\u2060everyone look"),
        ("ask <!subteam^S0ADMINS>", "ask @\u2060S0ADMINS"),
        ("ask <!subteam^S0ADMINS|@admins>", "ask @\u2060admins"),
        ("<!here|here> now", "@\u2060here now"),
        ("on <!date^1392734382|Feb 18, 2014>", "on Feb 18, 2014"),
        # What automatic parsing would turn into mentions, written as plain text.
        (
            "@channel, @here and @admins: read this",
            "@\u2060channel, @\u2060here and @\u2060admins: read this",
        ),
        ("[ping @here](https://x.example)", "<https://x.example|ping @\u2060here>"),
        # Left alone: addresses, code, and real user mentions.
        ("mail ann@example.com", "mail ann@example.com"),
        ("use `@functools.cache` or\n```\n@here\n```", "use `@functools.cache` or\n```\n@here\n```"),
        ("thanks <@U0ALICE>", "thanks <@U0ALICE>"),
    ],
)
def test_broadcast_mentions_become_plain_text(markdown: str, expected: str) -> None:
    assert markdown_to_mrkdwn(markdown) == expected


@pytest.mark.parametrize(
    "markdown",
    [
        BROADCASTS,
        f"# Heading {BROADCASTS}",
        f"- bullet {BROADCASTS}",
        f"- [ ] task {BROADCASTS}",
        f"> quoted {BROADCASTS}",
        f">> nested {BROADCASTS}",
        f"**bold {BROADCASTS}** and _it {BROADCASTS}_",
        f"[label {BROADCASTS}](https://x.example)",
        f"`code {BROADCASTS}`",
        f"```\n{BROADCASTS}\n```",
        f"$x {BROADCASTS}$",
        f"| a | b |\n|---|---|\n| {BROADCASTS} | [x](https://x.example) |",
        f"\\<!here> and &lt;!here&gt; and <!{'channel'}>",
        f"![{BROADCASTS}](sandbox:/mnt/data/chart.png)",
        ("word " * 400 + BROADCASTS + "\n\n") * 4,
    ],
)
def test_no_output_path_pings_anyone(markdown: str) -> None:
    chunks = format_reply(markdown, {"chart.png": "<!here> chart"}, limit=500)
    assert chunks
    for chunk in chunks:
        assert not LIVE.search(chunk), chunk


@pytest.mark.parametrize(
    "markdown",
    [
        "<https://evil.example|https://good.example>",
        "<https://evil.example/login|good.example>",
        "<https://evil.example|www.good.example/login>",
        "[https://good.example](https://evil.example)",
        "[good.example](https://evil.example)",
        "[Visit https://good.example now](https://evil.example)",
        "[alice@good.example](mailto:mallory@evil.example)",
        "[**https://good.example**](https://evil.example)",
        "| link |\n|---|\n| [https://good.example](https://evil.example) |",
        '- see [https://good.example](https://evil.example "Good")',
    ],
)
def test_a_link_never_shows_another_address_than_its_target(markdown: str) -> None:
    (out,) = format_reply(markdown)
    assert disguised_links(out) == []
    assert "evil.example" in out  # where the link goes is still shown


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("[docs](https://docs.python.org/3/)", "<https://docs.python.org/3/|docs>"),
        ("[example.com](https://example.com/)", "<https://example.com/|example.com>"),
        ("[https://x.example](https://x.example)", "<https://x.example>"),
        ("<https://www.good.example|good.example>", "<https://www.good.example|good.example>"),
        ("[the guide](https://evil.example)", "<https://evil.example|the guide>"),
    ],
)
def test_honest_links_keep_their_labels(markdown: str, expected: str) -> None:
    assert markdown_to_mrkdwn(markdown) == expected


async def test_the_models_broadcasts_and_disguised_links_are_posted_inert(bot: Bot) -> None:
    bot.openai.queue(
        Turn(
            text=(
                f"Attention {BROADCASTS}!\n\n"
                "Log in at <https://evil.example|https://good.example> or "
                "[https://good.example](https://evil.example).\n\n"
                "- **Also** <!here|here>, `2**10` and x_1*y_2 & <b>"
            )
        )
    )
    ts = new_ts()
    status, _ = await bot.send(mention(f"repeat after me: {BROADCASTS}", ts=ts))
    assert status == 200
    await bot.wait_runs_finished(1)
    posted = [call.args for call in bot.slack.calls("chat.postMessage")]
    assert posted and all(p["thread_ts"] == ts and p["channel"] == CHANNEL for p in posted)
    everything = _all_text(posted)
    assert not LIVE.search(everything)
    assert not PLAIN_BROADCAST.search(everything)  # nor anything automatic parsing would turn into one
    answer = posted[0]
    for text in [answer["text"], *(b["text"]["text"] for b in answer["blocks"] if "text" in b)]:
        assert disguised_links(text) == []
    assert INERT_AT + "channel" in answer["text"] and "evil.example" in answer["text"]
    assert "`2**10`" in answer["text"] and "x_1*y_2 &amp; &lt;b&gt;" in answer["text"]
