"""One error type for every mistake a user can make, so the CLI can print it without a traceback."""


class ReplayProxyError(Exception):
    """A user-facing error: the message says what is wrong and where."""


class ConfigError(ReplayProxyError):
    pass


class CassetteError(ReplayProxyError):
    pass


class WebhookError(ReplayProxyError):
    """A due webhook was not delivered as expected (`wait_for_webhooks`): the message says how."""
