"""One error type for every mistake a user can make, so the CLI can print it without a traceback;
and how any other exception is put in one line of a report or a log."""


class ReplayProxyError(Exception):
    """A user-facing error: the message says what is wrong and where."""


class ConfigError(ReplayProxyError):
    pass


class CassetteError(ReplayProxyError):
    pass


class WebhookError(ReplayProxyError):
    """A due webhook was not delivered as expected (`wait_for_webhooks`): the message says how."""


def exception_text(exc: BaseException) -> str:
    """'TypeName: message', or the type's name alone when the exception says nothing (many
    timeouts and resets): a failed attempt's cause in a report or a log line."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
