"""Live logs, one convention for every app: a log is a sequence of text chunks numbered 1, 2, 3 …
(``seq``), and a reader's ``offset`` is the number of the last chunk it has (0 at first).

``read_log`` answers ``{text, offset, done}`` as ``MLPortal.tailLog`` and the CLI's ``--follow``
read it: the text of the chunks after ``offset`` (at most ``LOG_PAGE_CHUNKS``), the new offset,
and ``done`` once the work is over and nothing is left to read.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.db import models
from django.db.models import Max, QuerySet

from core.errors import PortalError

LOG_PAGE_CHUNKS = 200


class LogChunk(models.Model):
    """A batch of lines of one log, in order of ``seq`` (the live-log offset). Subclasses add the
    foreign key to what the log belongs to and a unique constraint on (that key, ``seq``)."""

    seq = models.PositiveIntegerField()
    text = models.TextField()

    class Meta:
        abstract = True


def next_seq(chunks: QuerySet) -> int:
    """The ``seq`` for a new chunk after ``chunks`` (one log's chunks)."""
    return (chunks.aggregate(n=Max("seq"))["n"] or 0) + 1


def parse_offset(value: Any) -> int:
    """The ``?offset=`` of a log request as a whole number; PortalError saying what to send."""
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        raise PortalError("offset must be a whole number (the offset of the previous answer).",
                          fields={"offset": "Not a number."}) from None


def read_log(chunks: QuerySet, offset: int, *, finished: bool, max_chunks: int = LOG_PAGE_CHUNKS) -> dict:
    """``{text, offset, done}`` from one log's ``chunks`` after ``offset``. ``finished`` must be read
    before this call (a finished status read first guarantees the chunks are complete)."""
    rows = list(chunks.filter(seq__gt=offset).order_by("seq").values_list("seq", "text")[: max_chunks + 1])
    more = len(rows) > max_chunks
    rows = rows[:max_chunks]
    return {"text": "".join(text for _, text in rows), "offset": rows[-1][0] if rows else offset,
            "done": finished and not more}


def log_text(chunks: QuerySet) -> Iterator[str]:
    """The whole log, chunk page by chunk page (for a download), without loading it all at once."""
    offset = 0
    while True:
        page = read_log(chunks, offset, finished=True)
        if not page["text"]:
            return
        yield page["text"]
        offset = page["offset"]
