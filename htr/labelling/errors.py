"""What goes wrong in the review loop, each with a one-line message that says what to do."""
from __future__ import annotations


class LabellingError(Exception):
    """A failure of ``htr label`` or of writing a review folder; ``str(e)`` is the one-line message."""


class LabelStudioUnreachable(LabellingError):
    def __init__(self, url: str, detail: str):
        super().__init__(f"Label Studio at {url} is unreachable ({detail}): is it running, and is the URL right "
                         "(--url or $LABEL_STUDIO_URL)?")
        self.url = url


class LabelStudioAuthError(LabellingError):
    def __init__(self, url: str, status: int, detail: str):
        super().__init__(f"Label Studio at {url} refused the API token ({status}: {detail}): pass the token of "
                         "Account & Settings (--token or $LABEL_STUDIO_API_KEY)")
        self.url, self.status = url, status


class NothingToPull(LabellingError):
    """The project has no task, or no finished annotation that makes a label."""
