"""One error hierarchy. Each error carries the sentence the Slack user reads.

The replier is the only place that turns these into Slack messages; everything
else raises them and logs the cause once.
"""

from __future__ import annotations

import re
from typing import ClassVar


class TutorError(Exception):
    """Base class: `user_message` is shown in the thread as is."""

    user_message = "Something went wrong on my side. Please try again in a minute."
    #: True when trying the same step again later can succeed.
    retryable = False

    def __init__(self, detail: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(detail or self.user_message)
        self.detail = detail
        self.retry_after = retry_after

    @property
    def code(self) -> str:
        """Stable short name stored on the run row."""
        return re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", type(self).__name__).lower()


class QuotaExhausted(TutorError):
    user_message = (
        "I can't answer right now: the tutor's OpenAI account has run out of credit. "
        "Please let a workspace admin know."
    )


class RateLimited(TutorError):
    user_message = "Lots of questions at once and I couldn't get through. Please ask again in a minute."
    retryable = True


class ConversationBusy(TutorError):
    user_message = "I was still busy with an earlier question in this thread. Please ask again."
    retryable = True


class ContainerExpired(TutorError):
    user_message = "I lost the workspace for this thread. Please share your file again."
    retryable = True


class OpenAIUnavailable(TutorError):
    user_message = "OpenAI had a problem answering. Please try again in a minute."
    retryable = True


class AmbiguousCreate(TutorError):
    """The create call may or may not have reached OpenAI: reconcile, never re-send blindly."""

    user_message = "I'm having trouble reaching OpenAI. Please try again in a few minutes."
    retryable = True


class StreamDropped(OpenAIUnavailable):
    """The answer's event stream ended early; it is picked up again where it stopped."""


class ModelFailed(TutorError):
    user_message = "The model failed while answering. Please try again in a minute."


class ContextTooLong(TutorError):
    user_message = "This thread is too long for me to follow. Please start a new thread."


class RequestRejected(TutorError):
    user_message = "OpenAI rejected this request, so I couldn't answer. Please rephrase and try again."


class TutorMisconfigured(TutorError):
    user_message = "The tutor isn't configured correctly right now. An admin has been notified."


class ContextLost(TutorError):
    user_message = "I lost the earlier context of this thread, so I'm starting fresh."
    retryable = True


class RunTimedOut(TutorError):
    user_message = "That took too long, so I stopped. Try a smaller question or dataset."


class Refused(TutorError):
    user_message = "I can't help with that request."


class InternalError(TutorError):
    """A fault of our own (database, a bug): not OpenAI's, so not blamed on it."""

    user_message = "Something went wrong on my side while answering. Please try again in a minute."
    retryable = True


class EmptyQuestion(TutorError):
    user_message = (
        "What would you like to ask? Write your question after the mention, "
        "e.g. `@tutor How do I solve 3x + 11 = 14?`"
    )


class BudgetExceeded(TutorError):
    """A daily token budget is used up: the question is not sent to OpenAI. `detail` is
    "<user|channel|workspace>@<reset time, Unix seconds>" (stored on the run, rebuilt by `from_code`)."""

    WHOSE: ClassVar[dict[str, tuple[str, str]]] = {
        "user": ("You've", "your"),
        "channel": ("This channel has", "its"),
        "workspace": ("This workspace has", "its"),
    }

    @classmethod
    def of(cls, scope: str, resets_at: int) -> BudgetExceeded:
        return cls(f"{scope}@{resets_at}")

    @property
    def user_message(self) -> str:  # type: ignore[override]
        scope, _, at = getattr(self, "detail", "").partition("@")
        who, whose = self.WHOSE.get(scope, self.WHOSE["workspace"])
        when = "at 00:00 UTC"
        if at.isdigit():  # shown in the reader's time zone, with the plain UTC time as fallback
            when = f"<!date^{at}^{{date_short_pretty}} at {{time}}|{when}>"
        return (
            f"{who} used up {whose} tutor budget for today, so I didn't send this question to OpenAI; "
            f"it resets {when}."
        )


class SlackDeliveryFailed(TutorError):
    user_message = "I couldn't post my answer in this thread."
    retryable = True
    #: True when no answer came back (a timeout, a dropped connection): the request may still be
    #: landing at Slack. An error Slack answered with means it is done with the request.
    outcome_unknown = False


class NotInstalled(SlackDeliveryFailed):
    """Distribution mode: the workspace has no installation (never installed, or uninstalled), so
    there is no token to speak to it with; its runs end without a word."""

    retryable = False


class SlackRateLimited(SlackDeliveryFailed):
    """Slack answered 429: nothing happened; try again after `retry_after`."""


class StreamRefused(SlackDeliveryFailed):
    """Slack won't stream here (surface, token type, arguments): post and edit instead."""

    retryable = False


class StreamClosed(SlackDeliveryFailed):
    """The stream is over (stopped, or closed by Slack after ~5 minutes): edit the message instead."""

    retryable = False


class FileError(TutorError):
    """A shared file the tutor can't use. The sentence names the file; the run goes on without it."""

    template = "I couldn't use `{name}`."

    def __init__(self, detail: str = "", *, name: str = "the file", **params: object) -> None:
        super().__init__(detail or self.template)
        self.name = name
        self.params = params

    @property
    def user_message(self) -> str:  # type: ignore[override]
        return self.template.format(name=self.name, **self.params)


class FileTooLarge(FileError):
    template = "`{name}` is larger than {limit_mb} MB, so I didn't download it. Please share a smaller file."


class UnsupportedFileType(FileError):
    template = (
        "I can't work with `{name}`: {type} files aren't supported. "
        "I can read CSV, TSV, XLSX, JSON, TXT, Markdown, PDF, DOCX, PPTX and images (PNG, JPEG, GIF, WebP)."
    )


class FileUnreadable(FileError):
    template = (
        "I couldn't read `{name}`. It may be corrupt, or not the kind of file its name says. "
        "Please check it and share it again."
    )


class FileSizeMismatch(FileError):
    template = (
        "`{name}` turned out larger than Slack said it was, so I stopped downloading it. "
        "Please share it again."
    )


class DocumentNotIndexed(FileError):
    template = (
        "OpenAI couldn't index `{name}` for searching, so I can't look things up in it; "
        "a PDF with selectable text, a DOCX or a TXT file works best."
    )


class NotForLibrary(FileError):
    template = (
        "`{name}` can't go into the library: it holds PDF, DOCX, PPTX, TXT and Markdown files. "
        "Share a {type} file with a question instead, and I'll analyse it in that thread."
    )


class FileDownloadFailed(FileError):
    template = "I couldn't download `{name}` from Slack. Please share it again."


class ConfigError(Exception):
    """Bad or missing operator configuration; the CLI prints it and exits 2."""


def _all_subclasses(cls: type[TutorError]) -> list[type[TutorError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found += _all_subclasses(sub)
    return found


def from_code(code: str | None, detail: str = "") -> TutorError:
    """Rebuild a stored run error (run.error_code) so the replier can show its sentence."""
    for cls in _all_subclasses(TutorError):
        if cls("").code == code:
            return cls(detail)
    return TutorError(detail)


def file_error(code: str | None, *, name: str, **params: object) -> FileError:
    """Rebuild a stored file error (thread_files.error_code) with the file's name."""
    for cls in _all_subclasses(FileError):
        if issubclass(cls, FileError) and cls().code == code:
            return cls("", name=name, **params)
    return FileUnreadable(name=name)
