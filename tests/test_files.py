"""Share a CSV, get charts back: file shares land in the thread's sandbox, exactly once."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from bot.inbox import DATA_PROFILE
from tests.conftest import Bot, BotFactory
from tests.datasets import covid_csv
from tests.fakes import Chart, Turn, png_bytes, wait_for
from tests.slack_payloads import CHANNEL, block_action, file_share, message, new_ts, slash_command

DATA_VISUALIZER = "You are great at creating beautiful data visualizations."
THREE_CHARTS = Turn(
    text="Cases rise in three waves; deaths follow cases by about two weeks.",
    charts=[Chart("cases_by_country.png"), Chart("weekly_new_cases.png"), Chart("deaths_vs_cases.png")],
)


def _csv(bot: Bot, name: str = "covid_worldwide.csv") -> dict[str, Any]:
    return bot.slack.host_file(name, covid_csv(), "text/csv")


async def test_csv_shared_with_mention_is_analysed_into_three_charts(bot: Bot) -> None:
    data = covid_csv()
    assert data.count(b"\n") > 3000  # a realistic few-thousand-row file
    shared = bot.slack.host_file("covid_worldwide.csv", data, "text/csv")
    bot.openai.queue(THREE_CHARTS)
    ts = new_ts()
    await bot.send(
        file_share(
            "<@U0TUTORBOT> Create 3 data visualizations based on the trends in this file", [shared], ts=ts
        )
    )
    await bot.wait_runs_finished(1)

    download = bot.slack.calls("/files-pri/")
    assert len(download) == 1 and download[0].bearer == bot.slack.bot_token
    (upload,) = bot.openai.calls("POST /v1/files")
    assert upload.form["purpose"] == "user_data"
    assert upload.files["file"].filename == "covid_worldwide.csv"
    assert upload.files["file"].content == data
    file_id = next(iter(bot.openai.files))
    added = [c for c in bot.openai.calls("POST /v1/containers/") if c.path.endswith("/files")]
    assert [c.json["file_id"] for c in added] == [file_id]

    (create,) = [c.json for c in bot.openai.calls("POST /v1/responses$")]
    assert "/mnt/data/covid_worldwide.csv" in create["input"][0]["content"][0]["text"]
    assert create["instructions"].startswith(DATA_VISUALIZER)
    assert create["metadata"]["profile"] == DATA_PROFILE

    uploads = bot.slack.uploads
    assert [u.filename for u in uploads] == [
        "cases_by_country.png",
        "weekly_new_cases.png",
        "deaths_vs_cases.png",
    ]
    assert [u.title for u in uploads] == ["Cases by country", "Weekly new cases", "Deaths vs cases"]
    assert all(u.thread_ts == ts and u.channel_id == CHANNEL for u in uploads)
    (answer,) = bot.slack.messages(CHANNEL, ts)
    assert "three waves" in answer["text"] and "sandbox:" not in answer["text"]


async def test_csv_without_mention_gets_an_offer_and_the_button_starts_the_analysis(bot: Bot) -> None:
    shared = _csv(bot)
    bot.openai.queue(THREE_CHARTS)
    ts = new_ts()
    await bot.send(file_share("here's the data", [shared], ts=ts))
    (offer,) = await wait_for(lambda: bot.slack.messages(CHANNEL, ts), message="no offer")
    assert offer["text"] == "Want me to analyse `covid_worldwide.csv`?"
    button = offer["blocks"][1]["elements"][0]
    assert button["action_id"] == "tutor_analyse"
    assert bot.openai.calls("POST /v1/responses") == []  # nothing analysed before the click

    # The same file shared again is not offered twice.
    await bot.send(file_share("again", [shared], ts=new_ts()))
    assert len(bot.slack.calls("chat.postMessage")) == 1

    press = block_action(
        "tutor_analyse",
        button["value"],
        message_ts=offer["ts"],
        thread_ts=ts,
        response_url=bot.slack.response_url("offer"),
    )
    status, _ = await bot.send_form(press)
    assert status == 200
    await bot.send_form(press)  # a double click starts nothing more
    await wait_for(lambda: len(bot.slack.uploads) == 3, message="charts not uploaded after the click")
    await bot.wait_runs_finished(2)
    assert len(bot.openai.calls("POST /v1/responses$")) == 1
    assert bot.openai.calls("POST /v1/responses$")[0].json["instructions"].startswith(DATA_VISUALIZER)
    assert all(u.thread_ts == ts for u in bot.slack.uploads)
    assert bot.slack.responded[0]["replace_original"] is True
    assert "covid_worldwide.csv" in bot.slack.responded[0]["text"]
    # The thread is a tutor thread now: a follow-up without a mention is answered.
    await bot.send(message("and which country had the most deaths?", thread_ts=ts))
    await bot.wait_runs_finished(3)
    assert len(bot.openai.calls("POST /v1/responses$")) == 2


async def test_auto_mode_analyses_without_asking(bot: Bot) -> None:
    status, body = await bot.send_form(slash_command("auto on", response_url=bot.slack.response_url()))
    assert status == 200 and "without asking" in body
    bot.openai.queue(THREE_CHARTS)
    ts = new_ts()
    await bot.send(file_share("", [_csv(bot)], ts=ts))
    await wait_for(lambda: len(bot.slack.uploads) == 3)
    texts = [m["text"] for m in bot.slack.messages(CHANNEL, ts)]
    assert not any("Want me to analyse" in t for t in texts)

    await bot.send_form(slash_command("auto off", response_url=bot.slack.response_url()))
    other = new_ts()
    await bot.send(file_share("", [_csv(bot, "sales.csv")], ts=other))
    (offer,) = await wait_for(lambda: bot.slack.messages(CHANNEL, other))
    assert offer["text"] == "Want me to analyse `sales.csv`?"


async def test_expired_container_is_recreated_with_the_threads_files(bot: Bot) -> None:
    ts = new_ts()
    await bot.send(file_share("<@U0TUTORBOT> summarise this", [_csv(bot)], ts=ts))
    await bot.wait_runs_finished(1)
    first = bot.openai.calls("POST /v1/responses$")[0].json["tools"][0]["container"]
    file_id = next(iter(bot.openai.files))
    bot.openai.expire_container(first)

    await bot.send(file_share("and now per month?", [], thread_ts=ts))
    await bot.wait_runs_finished(2)
    second = bot.openai.calls("POST /v1/responses$")[1].json
    assert second["tools"][0]["container"] != first
    created = [c.json for c in bot.openai.calls("POST /v1/containers$")]
    assert created[-1]["file_ids"] == [file_id]  # re-added from the Files API, not from Slack
    assert len(bot.slack.calls("/files-pri/")) == 1
    assert "sandbox was reset" in second["instructions"]
    assert "/mnt/data/covid_worldwide.csv" in second["instructions"]
    assert len(bot.slack.messages(CHANNEL, ts)) == 2


async def test_oversized_file_gets_a_sentence_and_is_not_downloaded(start_bot: BotFactory) -> None:
    bot = await start_bot(tutor_max_file_mb=1)
    big = bot.slack.host_file("huge.csv", b"a,b\n" * 400_000, "text/csv")
    ts = new_ts()
    await bot.send(file_share("<@U0TUTORBOT> plot this", [big], ts=ts))
    await bot.wait_runs_finished(1)
    texts = [m["text"] for m in bot.slack.messages(CHANNEL, ts)]
    assert texts[0] == "`huge.csv` is larger than 1 MB, so I didn't download it. Please share a smaller file."
    assert bot.slack.calls("/files-pri/") == []
    assert bot.openai.calls("POST /v1/files") == []


async def test_unsupported_type_is_named(bot: Bot) -> None:
    shared = bot.slack.host_file("setup.exe", b"MZ\x90\x00" * 10, "application/x-msdownload", filetype="exe")
    ts = new_ts()
    await bot.send(file_share("<@U0TUTORBOT>", [shared], ts=ts))
    await bot.wait_runs_finished(1)
    (notice,) = [m["text"] for m in bot.slack.messages(CHANNEL, ts)]
    assert notice.startswith("I can't work with `setup.exe`: EXE files aren't supported.")
    assert bot.openai.calls("POST /v1/responses") == []  # nothing left to ask the model


async def test_sign_in_page_instead_of_the_file_is_caught(bot: Bot) -> None:
    page = b"<!DOCTYPE html><html><head><title>Sign in | Slack</title></head></html>"
    shared = bot.slack.host_file("data.csv", page, "text/csv")
    ts = new_ts()
    await bot.send(file_share("<@U0TUTORBOT> what is in it?", [shared], ts=ts))
    await bot.wait_runs_finished(1)
    texts = [m["text"] for m in bot.slack.messages(CHANNEL, ts)]
    assert texts[0].startswith("I couldn't read `data.csv`.")
    assert bot.openai.calls("POST /v1/files") == []
    assert len(texts) == 2  # the question itself is still answered


@pytest.mark.parametrize("redirect", [False, True])
async def test_download_host_not_slack_is_refused_and_never_gets_the_token(bot: Bot, redirect: bool) -> None:
    seen: list[dict[str, str]] = []

    async def evil(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(body=b"a,b\n1,2\n", content_type="text/csv")

    app = web.Application()
    app.router.add_get("/{tail:.*}", evil)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "localhost", 0)  # another origin than the fake Slack's 127.0.0.1
    await site.start()
    evil_url = f"http://localhost:{runner.addresses[0][1]}/steal.csv"
    try:
        shared = bot.slack.host_file("data.csv", b"a,b\n1,2\n", "text/csv")
        if redirect:
            bot.slack.fail_next("/files-pri/", status=302, body={}, headers={"Location": evil_url})
        else:
            shared["url_private_download"] = shared["url_private"] = evil_url
        ts = new_ts()
        await bot.send(file_share("<@U0TUTORBOT> chart it", [shared], ts=ts))
        await bot.wait_runs_finished(1)
    finally:
        await runner.cleanup()
    assert seen == []
    texts = [m["text"] for m in bot.slack.messages(CHANNEL, ts)]
    assert texts[0] == "I couldn't download `data.csv` from Slack. Please share it again."
    assert bot.openai.calls("POST /v1/files") == []


async def test_same_file_shared_twice_in_a_thread_is_uploaded_once(bot: Bot) -> None:
    shared = _csv(bot)
    ts = new_ts()
    await bot.send(file_share("<@U0TUTORBOT> look", [shared], ts=ts))
    await bot.wait_runs_finished(1)
    await bot.send(file_share("same file again", [shared], thread_ts=ts))
    await bot.wait_runs_finished(2)
    assert len(bot.openai.calls("POST /v1/files")) == 1
    assert len(bot.slack.calls("/files-pri/")) == 1


async def test_partial_file_object_is_completed_with_files_info(bot: Bot) -> None:
    full = _csv(bot)
    partial = {
        "id": full["id"],
        "mode": "file_access",
        "file_access": "check_file_info",
        "created": 0,
        "timestamp": 0,
        "user": "",
        "name": "covid_worldwide.csv",
    }
    ts = new_ts()
    await bot.send(file_share("<@U0TUTORBOT> plot", [partial], ts=ts))
    await bot.wait_runs_finished(1)
    assert bot.slack.calls("files.info")[0].args["file"] == full["id"]
    assert len(bot.openai.calls("POST /v1/files")) == 1


async def test_image_goes_to_the_model_as_input_image(bot: Bot) -> None:
    photo = bot.slack.host_file("worksheet.png", png_bytes(8, 8), "image/png")
    ts = new_ts()
    await bot.send(file_share("<@U0TUTORBOT> solve problem 3 on this sheet", [photo], ts=ts))
    await bot.wait_runs_finished(1)
    (create,) = [c.json for c in bot.openai.calls("POST /v1/responses$")]
    parts = create["input"][0]["content"]
    assert parts[1] == {"type": "input_image", "file_id": next(iter(bot.openai.files)), "detail": "auto"}
    assert create["instructions"].startswith("You are a personal math tutor.")  # not a data analysis


async def test_other_files_the_model_wrote_are_uploaded_too(bot: Bot) -> None:
    bot.openai.queue(
        Turn(
            text="Cleaned the data and plotted it.",
            charts=[Chart("trend.png")],
            extra_files=[("covid_cleaned.csv", b"date,cases\n2020-03-01,1\n")],
        )
    )
    ts = new_ts()
    await bot.send(file_share("<@U0TUTORBOT> clean this up", [_csv(bot)], ts=ts))
    await bot.wait_runs_finished(1)
    assert [u.filename for u in bot.slack.uploads] == ["trend.png", "covid_cleaned.csv"]
    # The user's own CSV, also in the container, is not echoed back.
    assert "covid_worldwide.csv" not in [u.filename for u in bot.slack.uploads]


async def test_a_file_name_is_shown_inert(bot: Bot) -> None:
    """A file name is the user's text: it can't ping the channel or break out of its code span."""
    shared = bot.slack.host_file(
        "<!here>`x`.exe", b"MZ\x90\x00" * 10, "application/x-msdownload", filetype="exe"
    )
    ts = new_ts()
    await bot.send(file_share("<@U0TUTORBOT>", [shared], ts=ts))
    await bot.wait_runs_finished(1)
    (notice,) = [m["text"] for m in bot.slack.messages(CHANNEL, ts)]
    assert "<!here>" not in notice
    assert notice.startswith("I can't work with `&lt;!here&gt;'x'.exe`")
