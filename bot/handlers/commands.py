"""The `/tutor` slash command. Slack sends no thread with it, so it acts on the channel or DM.

Every answer is the ack itself (ephemeral), given once the small database write is done: the
OpenAI clean-up after a reset happens later, in the worker.
"""

from __future__ import annotations

import logging
import re
from decimal import Decimal
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck

from bot.formatting import escape_mrkdwn
from bot.handlers.events import CHANNEL_ID, TEAM_ID, database_down
from bot.library import STATUS_WORDS, LibraryListing
from bot.privacy import Forgotten
from bot.tutor import Tutor
from bot.ui import feedback_line, library_clear_confirmation
from bot.usage import FEEDBACK_DAYS, Figures, Limits, Period, UsageReport

log = logging.getLogger(__name__)

MAX_INSTRUCTIONS = 3000
#: How much of what the user typed an answer quotes back.
MAX_QUOTE = 100
DATABASE_DOWN = "I can't reach my database right now, so nothing changed. Please try again in a minute."

HELP = """\
*Your tutor* answers math questions and analyses data, in threads.
• *Ask:* `@tutor I need to solve 3x + 11 = 14. Can you help me?` — it answers in the thread and \
remembers it; later messages in that thread need no mention.
• *Explain:* `@tutor Explain derivatives with a plot` — charts it draws are posted in the thread.
• *Data:* share a CSV or XLSX with a mention (or press *Analyse it* on my offer) to get charts back.
• *Documents:* share a PDF, DOCX, PPTX, TXT or Markdown file with your question — I read it, \
and name my sources.
• *Start over in a thread:* `@tutor reset`, or the *Start over* button on any of my answers.
Commands (they act on this channel or DM; Slack doesn't allow them in threads):
• `/tutor reset` — every tutor thread here starts fresh; their files are deleted from OpenAI.
• `/tutor status` — profile, model, active threads, auto analysis, files held.
• `/tutor profile [math|data|<name>]` — list the profiles or pick one for this channel.
• `/tutor instructions <text>` — extra instructions for every answer here (`clear` removes them).
• `/tutor auto on|off` — analyse spreadsheets shared here without asking first.
• `/tutor library` — the course material every thread here searches (name, size, who added it, \
indexing). `/tutor library add`, then share files (or `@tutor add this to the library` on them); \
`/tutor library remove <name>`; `/tutor library clear`.
• `/tutor usage` — tokens and estimated cost today and this month, here and yours (admins: the \
workspace, its top channels and people).
• `/tutor budget` — the daily token limits here. Admins: `/tutor budget user <tokens>|off|default` \
(per person, in this channel), `/tutor budget channel <tokens>|off` (everyone here together).
• `/tutor forget me` — deletes everything I keep about you in this workspace, at OpenAI too.
• `/tutor help` — this message."""


def register(app: AsyncApp, tutor: Tutor) -> None:
    async def tutor_command(ack: AsyncAck, command: dict[str, Any]) -> None:
        text = str(command.get("text") or "").replace("\x00", "").strip()
        sub, _, rest = text.partition(" ")
        where = {
            "team_id": str(command.get("team_id") or ""),
            "channel_id": str(command.get("channel_id") or ""),
        }
        handler = SUBCOMMANDS.get(sub.lower() or "help")
        if handler is None:
            await ack(text=f"unknown command: {quote(sub)}\n\n{HELP}")
            return
        if handler is not _help and not (
            TEAM_ID.fullmatch(where["team_id"]) and CHANNEL_ID.fullmatch(where["channel_id"])
        ):
            log.warning("ignored /tutor %s without a team and channel", sub.lower())
            await ack(text="I couldn't tell which channel this is for, so nothing changed.")
            return
        needs_user = handler in (_library, _usage, _budget, _forget)
        args = {**where, "user_id": str(command.get("user_id") or "")} if needs_user else where
        try:
            answer = await handler(tutor, args, rest.strip())
        except Exception as exc:
            if not database_down(exc):
                raise
            log.error("/tutor %s: database unavailable (%s)", sub.lower(), type(exc).__name__)
            answer = DATABASE_DOWN
        await ack(**answer) if isinstance(answer, dict) else await ack(text=answer)

    app.command("/tutor")(tutor_command)


def quote(text: str, limit: int = MAX_QUOTE) -> str:
    """What the user typed, cut to `limit` characters for an answer that echoes it."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def _help(_tutor: Tutor, _where: dict[str, str], _rest: str) -> str:
    return HELP


async def _reset(tutor: Tutor, where: dict[str, str], _rest: str) -> str:
    count = await tutor.reset_channel(**where)
    place = "this DM" if where["channel_id"].startswith("D") else f"<#{where['channel_id']}>"
    if count == 0:
        return f"There was nothing to reset in {place}."
    threads = "tutor thread" if count == 1 else "tutor threads"
    return f"Reset {count} {threads} in {place}. Their next message starts fresh."


async def _status(tutor: Tutor, where: dict[str, str], _rest: str) -> str:
    status = await tutor.channel_status(**where)
    lines = [
        f"*Profile:* {status.profile_name}  •  *Model:* `{status.model}`",
        f"*Active tutor threads:* {status.active_threads}  •  *Files held:* {status.files}",
        f"*Auto analysis of shared spreadsheets:* {'on' if status.auto_analysis else 'off'}",
    ]
    library = await tutor.library.listing(**where)
    if library.entries:
        lines.append(f"*Channel library:* {library.progress} (`/tutor library` lists them)")
    if status.custom_instructions:
        lines.append(f"*Custom instructions:* {status.custom_instructions}")
    return "\n".join(lines)


async def _profile(tutor: Tutor, where: dict[str, str], rest: str) -> str:
    if not rest:
        current = (await tutor.channel_status(**where)).profile_name
        names = "\n".join(
            f"• `{p.slug}` — {p.name}{' (in use here)' if p.name == current else ''}"
            for p in await tutor.profiles()
        )
        return f"Profiles:\n{names}\nPick one with `/tutor profile <name>`."
    chosen = await tutor.choose_profile(**where, name=rest)
    if chosen is None:
        available = ", ".join(f"`{p.slug}`" for p in await tutor.profiles())
        return f"There is no profile called `{quote(rest)}`. Available: {available}."
    return f"This channel now uses the *{chosen.name}* profile for new tutor threads."


async def _instructions(tutor: Tutor, where: dict[str, str], rest: str) -> str:
    if not rest:
        return "Give the instructions after the command, e.g. `/tutor instructions Answer in French.`"
    if rest.lower() == "clear":
        await tutor.set_instructions(**where, text=None)
        return "Custom instructions removed for this channel."
    if len(rest) > MAX_INSTRUCTIONS:
        return f"Those instructions are {len(rest)} characters long; the limit is {MAX_INSTRUCTIONS}."
    await tutor.set_instructions(**where, text=rest)
    return f"Every answer in this channel will now follow: {rest}"


async def _auto(tutor: Tutor, where: dict[str, str], rest: str) -> str:
    if rest.lower() not in ("on", "off"):
        return "Use `/tutor auto on` or `/tutor auto off`."
    on = rest.lower() == "on"
    await tutor.set_auto_analysis(**where, on=on)
    if on:
        return "Spreadsheets shared here will be analysed without asking first."
    return "I'll ask before analysing spreadsheets shared here."


async def _library(tutor: Tutor, where: dict[str, str], rest: str) -> str | dict[str, Any]:
    sub, _, name = rest.partition(" ")
    channel = {"team_id": where["team_id"], "channel_id": where["channel_id"]}
    sub = sub.lower()
    if sub == "add":
        await tutor.library.request_files(**channel, user_id=where["user_id"])
        return (
            "Share the files for this channel's library now (in the next 10 minutes), here in the channel; "
            "I'll index them and say when every tutor thread here can search them."
        )
    if sub == "remove":
        if not name.strip():
            return "Name the file to remove, e.g. `/tutor library remove algebra-notes.pdf`."
        removed = await tutor.library.remove(**channel, name=name)
        if not removed:
            return (
                f"There is no `{quote(name.strip())}` in this channel's library. `/tutor library` lists it."
            )
        return f"Removed `{removed[0]}` from this channel's library; it is deleted from OpenAI too."
    if sub == "clear":
        count = len((await tutor.library.listing(**channel)).entries)
        if not count:
            return "This channel's library is already empty."
        return library_clear_confirmation(where["channel_id"], count)
    if sub:
        return LIBRARY_USAGE
    return library_text(await tutor.library.listing(**channel))


LIBRARY_USAGE = (
    "Use `/tutor library`, `/tutor library add`, `/tutor library remove <name>` or `/tutor library clear`."
)


def library_text(listing: LibraryListing) -> str:
    if not listing.entries:
        return (
            "This channel's library is empty. Add course material with `/tutor library add` (then share "
            "the files), or `@tutor add this to the library` on a shared file."
        )
    lines = [f"*This channel's library* ({listing.progress}); every tutor thread here searches it:"]
    for entry in listing.entries:
        when = f"<!date^{int(entry.added_at.timestamp())}^{{date_short_pretty}}|{entry.added_at:%Y-%m-%d}>"
        status = STATUS_WORDS.get(entry.status, entry.status)
        name = escape_mrkdwn(entry.name)
        by = f"<@{entry.added_by}>" if entry.added_by else "someone who asked to be forgotten"
        lines.append(f"• *{name}* — {_size(entry.size)}, added by {by} {when}, {status}")
    return "\n".join(lines)


def _size(size: int) -> str:
    if size >= 1 << 20:
        return f"{size / (1 << 20):.1f} MB"
    return f"{max(1, round(size / 1024))} KB"


async def _usage(tutor: Tutor, where: dict[str, str], _rest: str) -> str:
    return usage_text(await tutor.usage_report(**where))


BUDGET_USAGE = (
    "Use `/tutor budget` to see the limits here; admins set them with "
    "`/tutor budget user <tokens>|off|default` or `/tutor budget channel <tokens>|off` "
    "(e.g. `/tutor budget user 50k`)."
)
NOT_ADMIN = "Only a workspace admin can change the tutor's budgets, so nothing changed."
#: "50000", "50,000", "50k", "1.5M".
TOKENS = re.compile(r"(\d+(?:\.\d+)?)\s*([km]?)", re.IGNORECASE)
#: Larger limits are refused as typos (and would overflow the column).
MAX_TOKENS = 10**12


async def _budget(tutor: Tutor, where: dict[str, str], rest: str) -> str:
    channel = {"team_id": where["team_id"], "channel_id": where["channel_id"]}
    if not rest:
        return budget_text(await tutor.usage.limits(**channel))
    scope, _, value = rest.lower().partition(" ")
    tokens = _tokens(value.strip().replace(",", "").replace("_", ""))
    if scope not in ("user", "channel") or tokens is None:
        return BUDGET_USAGE
    limit = None if tokens == "default" or (scope == "channel" and tokens == 0) else int(tokens)
    limits = await tutor.set_budget(**where, scope="user" if scope == "user" else "channel", tokens=limit)
    if limits is None:
        return NOT_ADMIN
    return f"Done. {budget_text(limits)}"


def _tokens(value: str) -> int | str | None:
    """A token count as typed: a number (k, M), `off` (0: no limit) or `default`; None if neither."""
    if value in ("off", "none", "unlimited"):
        return 0
    if value in ("default", "reset"):
        return "default"
    match = TOKENS.fullmatch(value)
    if match is None:
        return None
    scale = {"": 1, "k": 1_000, "m": 1_000_000}[match.group(2).lower()]
    tokens = int(Decimal(match.group(1)) * scale)
    return tokens if tokens <= MAX_TOKENS else None


def usage_text(report: UsageReport) -> str:
    lines = [
        "*Tutor usage* (UTC days; costs are estimates)",
        _period_line("This channel", report.channel),
        _period_line("You", report.me),
    ]
    if report.workspace is not None:
        lines.append(_period_line("Workspace", report.workspace))
        lines.append(_top_line("Top channels this month", [(f"<#{c}>", f) for c, f in report.top_channels]))
        lines.append(_top_line("Top people this month", [(f"<@{u}>", f) for u, f in report.top_users]))
    month, where = (report.workspace.month, "") if report.workspace else (report.channel.month, "here ")
    if month.answers:
        lines.append(_breakdown(month, where))
    if report.channel_feedback is not None:
        lines.append(f"*Answers rated here:* {feedback_line(report.channel_feedback, days=FEEDBACK_DAYS)}")
    if report.workspace_feedback is not None:
        lines.append(f"*In the workspace:* {feedback_line(report.workspace_feedback, days=FEEDBACK_DAYS)}")
    lines.append(
        "_Cost: an estimate from list prices per token; "
        "code-interpreter container time is billed separately._"
    )
    return "\n".join(lines)


def _period_line(who: str, period: Period) -> str:
    return f"*{who}:* today {_figures(period.today)} • this month {_figures(period.month)}"


def _figures(figures: Figures) -> str:
    if not figures.answers:
        return "nothing yet"
    answers = "answer" if figures.answers == 1 else "answers"
    cost = _cost(figures)
    return f"{figures.tokens:,} tokens ({figures.answers} {answers}{', ' + cost if cost else ''})"


def _cost(figures: Figures) -> str:
    """The estimated cost ("≈ $0.0021") and the models without a price; "" if there is neither."""
    parts = []
    if figures.cost is not None:
        parts.append(f"≈ ${figures.cost:.4f}" if figures.cost < Decimal("0.01") else f"≈ ${figures.cost:.2f}")
    if figures.unpriced:
        parts.append("no price for " + ", ".join(f"`{model}`" for model in figures.unpriced))
    return "; ".join(parts)


def _top_line(title: str, rows: list[tuple[str, Figures]]) -> str:
    if not rows:
        return f"*{title}:* nothing yet"
    shown = [f"{name} {f.tokens:,}" + (f" ({cost})" if (cost := _cost(f)) else "") for name, f in rows]
    return f"*{title}:* " + " • ".join(shown)


def _breakdown(month: Figures, where: str) -> str:
    counts = month.counts
    return (
        f"This month {where}in detail: {counts.input_tokens:,} input ({counts.cached_tokens:,} cached), "
        f"{counts.output_tokens:,} output ({counts.reasoning_tokens:,} reasoning); "
        f"code ran in {counts.code_runs} of {counts.answers} answers."
    )


def budget_text(limits: Limits) -> str:
    per_user = _limit(limits.per_user)
    source = "this channel's own limit" if limits.per_user_here else "the workspace setting"
    return "\n".join(
        [
            "*Daily token budgets here* (input + output tokens; they reset at 00:00 UTC):",
            f"• Per person: {per_user} ({source})",
            f"• This channel: {_limit(limits.per_channel, limits.used_by_channel)}",
            f"• Workspace: {_limit(limits.workspace, limits.used_by_workspace)}",
        ]
    )


def _limit(tokens: int, used: int | None = None) -> str:
    if not tokens:
        return "no limit"
    return f"{tokens:,}" + (f" ({used:,} used today)" if used is not None else "")


async def _forget(tutor: Tutor, where: dict[str, str], rest: str) -> str:
    if rest.lower() != "me" or not where["user_id"]:
        return "Use `/tutor forget me`: it deletes everything I keep about you in this workspace."
    forgotten = await tutor.privacy.forget_user(team_id=where["team_id"], user_id=where["user_id"])
    return forgotten_text(forgotten)


def forgotten_text(forgotten: Forgotten) -> str:
    if forgotten.nothing:
        return "I keep nothing about you in this workspace, so there was nothing to delete."
    deleted = [f"{_count(forgotten.questions, 'of your questions', 'of your questions')}"]
    if forgotten.threads:
        others = (
            f", with {_count(forgotten.others_questions, 'question', 'questions')} other people asked in them"
            if forgotten.others_questions
            else ""
        )
        deleted.append(
            f"{_count(forgotten.threads, 'tutor thread', 'tutor threads')} you started, whole{others}"
        )
    if forgotten.turns:
        deleted.append(
            f"{_count(forgotten.turns, 'question', 'questions')} of yours in someone else's thread"
            " (the rest of that thread stays)"
        )
    deleted.append(_count(forgotten.files, "file", "files"))
    lines = [
        "Deleted: " + "; ".join(deleted) + ".",
        "Their copies (conversations, stored answers, sandboxes, files) are queued for deletion at "
        "OpenAI and gone within a few minutes.",
    ]
    if forgotten.library_files:
        kept = _count(
            forgotten.library_files,
            "file you added to a channel library stays",
            "files you added to channel libraries stay",
        )
        lines.append(
            f"{kept} (course material for everyone), without your name; "
            "`/tutor library remove <name>` deletes one."
        )
    lines.append("Slack keeps your messages themselves: delete them in Slack if you want them gone.")
    return "\n".join(lines)


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


SUBCOMMANDS = {
    "help": _help,
    "reset": _reset,
    "status": _status,
    "profile": _profile,
    "instructions": _instructions,
    "auto": _auto,
    "library": _library,
    "usage": _usage,
    "budget": _budget,
    "forget": _forget,
}
