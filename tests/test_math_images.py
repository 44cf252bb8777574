"""Display equations are shown as images in their place in the answer, uploaded once per thread."""

from __future__ import annotations

import asyncio
import io
import struct
from typing import Any

import pytest
from matplotlib.image import imread

from bot.math_images import render, render_sync
from tests.conftest import Bot, BotFactory
from tests.fakes import Turn, wait_for
from tests.slack_payloads import CHANNEL, mention, message, new_ts

QUADRATIC = r"x = \frac{-b \pm \sqrt{b^2-4ac}}{2a}"
INTEGRAL = r"\int_0^1 x^2\,dx = \frac{1}{3}"
SUM = r"\sum_{n=1}^{\infty} \frac{1}{n^2} = \frac{\pi^2}{6}"
MATRIX = r"A = \begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}"
TWO_EQUATIONS = (
    "Use the quadratic formula:\n\n"
    f"\\[ {QUADRATIC} \\]\n\n"
    "Then check the area under the curve:\n\n"
    f"$$ {INTEGRAL} $$"
)
INTERNAL_ERROR = {"ok": False, "error": "internal_error"}


def png_size(content: bytes) -> tuple[int, int]:
    assert content[:8] == b"\x89PNG\r\n\x1a\n"
    assert content[12:16] == b"IHDR"
    width, height = struct.unpack(">II", content[16:24])
    return width, height


@pytest.mark.parametrize("latex", [QUADRATIC, INTEGRAL, SUM, r"\lim_{x \to 0} \frac{\sin x}{x} = 1", "x"])
def test_equation_is_a_legible_png_with_ink(latex: str) -> None:
    content = render_sync(latex)
    assert content is not None
    width, height = png_size(content)
    assert 20 <= width <= 2000 and 20 <= height <= 800
    image = imread(io.BytesIO(content))
    pixels = image if image.ndim == 2 else image[..., :3].mean(axis=2)
    assert pixels.max() > 0.95  # a white background
    dark = (pixels < 0.5).mean()
    assert 0.005 < dark < 0.5  # glyphs, neither blank nor a black box


def test_bigger_equations_make_bigger_images() -> None:
    small, large = render_sync("x"), render_sync(QUADRATIC)
    assert small is not None and large is not None
    assert png_size(large)[0] > 3 * png_size(small)[0]
    assert png_size(large)[1] > 40  # a fraction at ~22 pt is tall enough to read


@pytest.mark.parametrize(
    "latex", [MATRIX, r"\frac{", r"\begin{align} a &= b \end{align}", "", r"\unknowncommand{x}", "x" * 5000]
)
def test_what_mathtext_cannot_draw_is_none(latex: str) -> None:
    assert render_sync(latex) is None


def test_a_very_wide_equation_stays_within_the_size_limit() -> None:
    content = render_sync(" + ".join(f"x_{{{i}}}^{{{i}}}" for i in range(60)))
    if content is not None:
        width, height = png_size(content)
        assert width <= 2000 and height <= 800


async def test_rendering_does_not_block_the_event_loop() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        content = await render(
            r"\oint_C \vec{F} \cdot d\vec{r} = \iint_S (\nabla \times \vec{F}) \cdot d\vec{S}"
        )
    finally:
        task.cancel()
    assert content is not None
    assert ticks > 0


def answer_posts(bot: Bot, ts: str) -> list[dict[str, Any]]:
    return bot.slack.messages(CHANNEL, ts)


def block_types(post: dict[str, Any]) -> list[str]:
    return [block["type"] for block in post.get("blocks") or []]


def images(post: dict[str, Any]) -> list[dict[str, Any]]:
    return [block for block in post.get("blocks") or [] if block["type"] == "image"]


async def ask(bot: Bot, text: str, *, ts: str | None = None, thread_ts: str | None = None) -> str:
    ts = ts or new_ts()
    bot.openai.queue(Turn(text=text, code=None))
    await bot.send(
        mention("Solve it", ts=ts) if thread_ts is None else message("and?", ts=ts, thread_ts=thread_ts)
    )
    return ts


async def test_answer_with_two_equations_is_one_message_with_images_in_place(bot: Bot) -> None:
    bot.slack.process_delay = 0.3  # Slack processes uploads asynchronously
    ts = await ask(bot, TWO_EQUATIONS)
    await bot.wait_runs_finished(1)

    (post,) = answer_posts(bot, ts)
    assert block_types(post) == ["section", "image", "section", "image", "context_actions", "actions"]
    assert "quadratic formula" in post["blocks"][0]["text"]["text"]
    assert "area under the curve" in post["blocks"][2]["text"]["text"]
    assert [image["alt_text"] for image in images(post)] == [QUADRATIC, INTEGRAL]
    # The notification text carries the equations as text.
    assert "quadratic formula" in post["text"] and "√" in post["text"]

    # Each image uploaded once, never shared into the thread as a message of its own.
    assert len(bot.slack.calls("files.getUploadURLExternal")) == 2
    completes = bot.slack.calls("files.completeUploadExternal")
    assert len(completes) == 2
    assert all("channel_id" not in c.args and "channels" not in c.args for c in completes)
    assert "alt_txt" not in bot.slack.calls("files.getUploadURLExternal")[0].args
    assert len(bot.slack.messages(CHANNEL, ts, include_uploads=True)) == 1
    uploaded = {u.file_id: u for u in bot.slack.uploads}
    assert {image["slack_file"]["id"] for image in images(post)} == set(uploaded)
    for upload in uploaded.values():
        assert upload.channel_id is None
        png_size(upload.content)

    # It waited for processing instead of posting too early (the fake refuses that).
    assert bot.slack.calls("files.info")
    assert len(bot.slack.calls("chat.postMessage")) == 1


async def test_same_formula_later_in_the_thread_reuses_its_image(bot: Bot) -> None:
    root = await ask(bot, TWO_EQUATIONS)
    await bot.wait_runs_finished(1)
    first_ids = [image["slack_file"]["id"] for image in images(answer_posts(bot, root)[0])]

    await ask(bot, f"Again:\n\n$$ {QUADRATIC} $$\n\nand something new:\n\n$$ {SUM} $$", thread_ts=root)
    await bot.wait_runs_finished(2)

    second = answer_posts(bot, root)[-1]
    second_ids = [image["slack_file"]["id"] for image in images(second)]
    assert second_ids[0] == first_ids[0]
    assert second_ids[1] not in first_ids
    assert len(bot.slack.calls("files.getUploadURLExternal")) == 3  # only the new formula


async def test_same_formula_in_another_thread_is_its_own_upload(bot: Bot) -> None:
    await ask(bot, f"$$ {QUADRATIC} $$")
    await bot.wait_runs_finished(1)
    await ask(bot, f"$$ {QUADRATIC} $$")
    await bot.wait_runs_finished(2)
    assert len(bot.slack.calls("files.getUploadURLExternal")) == 2


async def test_formula_mathtext_rejects_is_shown_as_text(bot: Bot) -> None:
    ts = await ask(
        bot, f"The matrix:\n\n\\[ {MATRIX} \\]\n\nand its trace:\n\n$$ \\operatorname{{tr}} A = 5 $$"
    )
    runs = await bot.wait_runs_finished(1)
    assert runs[0].status == "done"

    (post,) = answer_posts(bot, ts)
    assert block_types(post) == ["section", "section", "section", "image", "context_actions", "actions"]
    matrix = post["blocks"][1]["text"]["text"]
    assert "1" in matrix and "4" in matrix
    assert "pmatrix" not in matrix and "&amp;" not in matrix  # a text layout, not raw LaTeX
    assert len(bot.slack.calls("files.getUploadURLExternal")) == 1
    assert "couldn't" not in post["text"]


async def test_upload_refused_for_good_falls_back_to_text(bot: Bot) -> None:
    # An app installed without files:write can still answer.
    bot.slack.fail_next(
        "files.getUploadURLExternal", status=200, body={"ok": False, "error": "missing_scope"}, times=2
    )
    ts = await ask(bot, TWO_EQUATIONS)
    runs = await bot.wait_runs_finished(1)
    assert runs[0].status == "done"
    (post,) = answer_posts(bot, ts)
    assert block_types(post) == ["section", "section", "section", "section", "context_actions", "actions"]
    assert "√" in post["blocks"][1]["text"]["text"]


async def test_math_images_off_posts_text_only(start_bot: BotFactory) -> None:
    bot = await start_bot(tutor_math_images=False)
    ts = await ask(bot, TWO_EQUATIONS)
    await bot.wait_runs_finished(1)
    (post,) = answer_posts(bot, ts)
    assert block_types(post) == ["section", "context_actions", "actions"]
    assert "√" in post["text"] and "\\frac" not in post["text"]
    assert not bot.slack.calls("files.getUploadURLExternal")


async def test_post_failing_after_upload_does_not_upload_again(bot: Bot) -> None:
    bot.slack.fail_next("chat.postMessage", status=500, body=INTERNAL_ERROR)
    ts = await ask(bot, TWO_EQUATIONS)
    await wait_for(lambda: answer_posts(bot, ts), timeout=15, message="answer never posted")
    await bot.wait_runs_finished(1)
    assert len(bot.slack.calls("chat.postMessage")) == 2
    assert len(bot.slack.calls("files.getUploadURLExternal")) == 2
    (post,) = answer_posts(bot, ts)
    assert {image["slack_file"]["id"] for image in images(post)} == {u.file_id for u in bot.slack.uploads}


async def test_post_whose_success_was_lost_is_not_posted_again(bot: Bot) -> None:
    bot.slack.fail_next("chat.postMessage", status=500, body=INTERNAL_ERROR, after_handling=True)
    ts = await ask(bot, TWO_EQUATIONS)
    await bot.wait_runs_finished(1)
    assert len(answer_posts(bot, ts)) == 1
    assert len(bot.slack.calls("files.getUploadURLExternal")) == 2


async def test_lost_answer_to_complete_upload_reuses_the_file(bot: Bot) -> None:
    # Slack finished the upload but the answer was lost: the retry must not upload a second copy.
    bot.slack.fail_next("files.completeUploadExternal", status=500, body=INTERNAL_ERROR, after_handling=True)
    ts = await ask(bot, f"$$ {QUADRATIC} $$")
    await wait_for(lambda: answer_posts(bot, ts), timeout=15, message="answer never posted")
    await bot.wait_runs_finished(1)
    assert len(bot.slack.calls("files.getUploadURLExternal")) == 1
    (post,) = answer_posts(bot, ts)
    (image,) = images(post)
    assert image["slack_file"]["id"] == bot.slack.uploads[0].file_id


async def test_image_refused_once_is_posted_again(bot: Bot) -> None:
    bot.slack.fail_next("chat.postMessage", status=200, body={"ok": False, "error": "invalid_blocks"})
    ts = await ask(bot, TWO_EQUATIONS)
    await bot.wait_runs_finished(1)
    (post,) = answer_posts(bot, ts)
    assert len(images(post)) == 2


async def test_images_slack_never_accepts_become_text(bot: Bot) -> None:
    bot.slack.fail_next(
        "chat.postMessage", status=200, body={"ok": False, "error": "invalid_blocks"}, times=3
    )
    ts = await ask(bot, TWO_EQUATIONS)
    runs = await bot.wait_runs_finished(1, within=15)
    assert runs[0].status == "done"
    (post,) = answer_posts(bot, ts)
    assert block_types(post) == ["section", "section", "section", "section", "context_actions", "actions"]
    assert "√" in post["blocks"][1]["text"]["text"]


async def test_many_equations_are_split_at_slacks_block_limit(bot: Bot) -> None:
    text = "\n\n".join(f"Step {i}:\n\n$$ x_{{{i}}} = {i}^2 $$" for i in range(30))
    ts = await ask(bot, text)
    await bot.wait_runs_finished(1, within=30)
    posts = answer_posts(bot, ts)
    assert len(posts) == 2
    assert all(len(post["blocks"]) <= 50 for post in posts)
    assert sum(len(images(post)) for post in posts) == 30
    assert block_types(posts[-1])[-1] == "actions"
    assert "actions" not in block_types(posts[0])
    alts = [image["alt_text"] for post in posts for image in images(post)]
    assert alts == [f"x_{{{i}}} = {i}^2" for i in range(30)]
