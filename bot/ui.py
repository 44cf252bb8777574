"""The tutor's Slack UI in one place: action ids, the values its buttons carry, and the blocks of
answers (with feedback buttons), offers, the feedback modal and the Home tab. Handlers read
presses with it; the replier builds with it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from db.models import Rating
from db.repo import FeedbackSummary

ANALYSE_ACTION = "tutor_analyse"
START_OVER_ACTION = "tutor_start_over"
SHOW_WORK_ACTION = "tutor_show_work"
RESET_SHORTCUT = "tutor_reset_thread"
LIBRARY_CLEAR_ACTION = "tutor_library_clear"
LIBRARY_KEEP_ACTION = "tutor_library_keep"
FEEDBACK_ACTION = "tutor_feedback"
#: The modal a thumbs-down opens, and its one field.
FEEDBACK_MODAL = "tutor_feedback_comment"
FEEDBACK_COMMENT_BLOCK = "tutor_feedback_comment"
FEEDBACK_COMMENT_INPUT = "comment"
#: Characters of "what was wrong" kept (Slack lets the field hold this many).
FEEDBACK_COMMENT_LIMIT = 2_000
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: Characters of code or output one "Show work" block shows (a section holds 3,000).
WORK_TEXT_LIMIT = 2_800
NO_WORK = "I didn't run any code for this answer."
WORK_GONE = "I can't show the work for this answer anymore."


@dataclass(frozen=True)
class ThreadButton:
    """The value of Start over and Analyse it: the thread the button was posted in. Only a hint:
    handlers act where Slack says it was pressed."""

    channel_id: str
    thread_key: str

    def encode(self) -> str:
        return f"{self.channel_id}:{self.thread_key}"

    @classmethod
    def decode(cls, value: str) -> ThreadButton | None:
        channel, sep, thread = value.partition(":")
        return cls(channel, thread) if sep and channel else None


@dataclass(frozen=True)
class WorkButton:
    """The value of Show work: the answer's run."""

    run_uuid: str

    def encode(self) -> str:
        return self.run_uuid

    @classmethod
    def decode(cls, value: str) -> WorkButton | None:
        return cls(value) if _UUID.fullmatch(value) else None


@dataclass(frozen=True)
class FeedbackButton:
    """The value of a thumbs up or down: the rating and the answer's run. Only a claim: the use
    case checks that the run was answered where the click happened."""

    rating: Rating
    run_uuid: str

    def encode(self) -> str:
        return f"{self.rating}:{self.run_uuid}"

    @classmethod
    def decode(cls, value: str) -> FeedbackButton | None:
        rating, _, run_uuid = value.partition(":")
        if rating not in (Rating.HELPFUL, Rating.UNHELPFUL) or not _UUID.fullmatch(run_uuid):
            return None
        return cls(Rating(rating), run_uuid)


def section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def answer_controls(channel_id: str, thread_key: str, *, run_uuid: str | None) -> list[dict[str, Any]]:
    """Start over (for the thread); for an answer (`run_uuid`) also Show work and, just above the
    buttons, Slack's thumbs up / down (a `context_actions` block: feedback buttons go nowhere else)."""
    elements: list[dict[str, Any]] = [
        {
            "type": "button",
            "action_id": START_OVER_ACTION,
            "text": {"type": "plain_text", "text": "Start over"},
            "value": ThreadButton(channel_id, thread_key).encode(),
        }
    ]
    if run_uuid is not None:
        elements.append(
            {
                "type": "button",
                "action_id": SHOW_WORK_ACTION,
                "text": {"type": "plain_text", "text": "Show work"},
                "value": WorkButton(run_uuid).encode(),
            }
        )
    controls = {"type": "actions", "block_id": "tutor_controls", "elements": elements}
    return [controls] if run_uuid is None else [feedback_block(run_uuid), controls]


def feedback_block(run_uuid: str) -> dict[str, Any]:
    def button(rating: Rating, emoji: str, label: str) -> dict[str, Any]:
        return {
            "text": {"type": "plain_text", "text": emoji},
            "value": FeedbackButton(rating, run_uuid).encode(),
            "accessibility_label": label,
        }

    return {
        "type": "context_actions",
        "block_id": "tutor_feedback",
        "elements": [
            {
                "type": "feedback_buttons",
                "action_id": FEEDBACK_ACTION,
                "positive_button": button(Rating.HELPFUL, "👍", "This answer helped"),
                "negative_button": button(Rating.UNHELPFUL, "👎", "This answer didn't help"),
            }
        ],
    }


def feedback_modal(run_uuid: str) -> dict[str, Any]:
    """What a thumbs-down opens: one optional field; the answer's run rides in private_metadata."""
    return {
        "type": "modal",
        "callback_id": FEEDBACK_MODAL,
        "private_metadata": run_uuid,
        "title": {"type": "plain_text", "text": "What was wrong?"},
        "submit": {"type": "plain_text", "text": "Send"},
        "close": {"type": "plain_text", "text": "Skip"},
        "blocks": [
            section("Thanks for telling me. What was wrong with this answer? (optional)"),
            {
                "type": "input",
                "block_id": FEEDBACK_COMMENT_BLOCK,
                "optional": True,
                "label": {"type": "plain_text", "text": "What was wrong"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": FEEDBACK_COMMENT_INPUT,
                    "multiline": True,
                    "max_length": FEEDBACK_COMMENT_LIMIT,
                    "placeholder": {"type": "plain_text", "text": "A wrong step, a wrong result, unclear…"},
                },
            },
        ],
    }


def feedback_comment(view: dict[str, Any]) -> str | None:
    """What was typed into the thumbs-down modal (`view.state.values`), or None for nothing."""
    values = (view.get("state") or {}).get("values") or {}
    field = (values.get(FEEDBACK_COMMENT_BLOCK) or {}).get(FEEDBACK_COMMENT_INPUT) or {}
    text = field.get("value") if isinstance(field, dict) else None
    if not isinstance(text, str):
        return None
    return text.strip()[:FEEDBACK_COMMENT_LIMIT] or None


def feedback_line(summary: FeedbackSummary, *, days: int) -> str:
    """The Home tab's line: Helpful: 80 % of 25 ratings (20 answers) in the last 30 days."""
    share = summary.helpful_share
    if share is None:
        return f"_No answers rated in the last {days} days yet: use 👍 or 👎 under an answer._"
    ratings = f"{summary.ratings} rating{'' if summary.ratings == 1 else 's'}"
    answers = f"{summary.answers} answer{'' if summary.answers == 1 else 's'}"
    return f"Helpful: {round(share * 100)} % of {ratings} ({answers}) in the last {days} days"


def offer_blocks(text: str, channel_id: str, thread_ts: str | None) -> list[dict[str, Any]]:
    return [
        section(text),
        {
            "type": "actions",
            "block_id": "tutor_offer",
            "elements": [
                {
                    "type": "button",
                    "action_id": ANALYSE_ACTION,
                    "style": "primary",
                    "text": {"type": "plain_text", "text": "Analyse it"},
                    "value": ThreadButton(channel_id, thread_ts or "").encode(),
                }
            ],
        },
    ]


def work_blocks(steps: Sequence[tuple[str, str]]) -> tuple[str, list[dict[str, Any]]]:
    """Show work: each piece of code the model ran and what it printed, in code blocks."""
    if not steps:
        return NO_WORK, [section(NO_WORK)]
    blocks: list[dict[str, Any]] = [
        section(f"*The code I ran for this answer* ({len(steps)} step{'s' * (len(steps) > 1)}):")
    ]
    for number, (code, output) in enumerate(steps[:15], start=1):
        blocks.append(section(f"*Step {number}*\n```{_fenced(code) or '(no code)'}```"))
        if output.strip():
            blocks.append(section(f"Output:\n```{_fenced(output)}```"))
    return "The code I ran for this answer", blocks


def _fenced(text: str) -> str:
    text = text.replace("```", "'''").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text if len(text) <= WORK_TEXT_LIMIT else text[: WORK_TEXT_LIMIT - 1] + "…"


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


def home_view(threads: Sequence[tuple[str, str | None]], *, feedback: str) -> dict[str, Any]:
    """A `home` view; `threads` are (channel id, permalink or None), most recent first; `feedback`
    the workspace's share of helpful answers (`feedback_line`)."""
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
    blocks += [
        {"type": "divider"},
        {"type": "header", "text": {"type": "plain_text", "text": "How the tutor is doing here"}},
        section(feedback),
    ]
    return {"type": "home", "blocks": blocks}


def library_clear_confirmation(channel_id: str, count: int) -> dict[str, Any]:
    """The ephemeral answer to `/tutor library clear`: the question, and the buttons."""
    files = f"{count} file{'' if count == 1 else 's'}"
    text = f"Remove all {files} from this channel's library? They are deleted from OpenAI too."
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {
                "type": "actions",
                "block_id": "tutor_library_clear",
                "elements": [
                    {
                        "type": "button",
                        "action_id": LIBRARY_CLEAR_ACTION,
                        "style": "danger",
                        "text": {"type": "plain_text", "text": "Empty the library"},
                        "value": channel_id,
                    },
                    {
                        "type": "button",
                        "action_id": LIBRARY_KEEP_ACTION,
                        "text": {"type": "plain_text", "text": "Keep it"},
                        "value": channel_id,
                    },
                ],
            },
        ],
    }
