"""``s3://bucket/key``: the one parser of S3 locations (job files, settings, result folders, the inbox).

Parsing is plain text, not validation: the key is kept as written (``s3://b/k/`` keeps its slash, which
names a prefix), so each caller decides what an empty bucket or an odd key means and says so in its own
words (:func:`~analysis_wrapper.job_file.location_problem` for job files, :meth:`S3Uri.from_setting`
for the ``bucket[/prefix]`` settings).
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEME = "s3://"


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str = ""

    @staticmethod
    def matches(text: str) -> bool:
        """Whether ``text`` is spelt as an S3 location (``s3://…``)."""
        return text.startswith(SCHEME)

    @classmethod
    def parse(cls, text: str) -> S3Uri:
        """``s3://bucket/key`` -> bucket and key as written; :class:`ValueError` without ``s3://``."""
        if not cls.matches(text):
            raise ValueError(f"{text!r} is not an s3:// URI")
        bucket, _, key = text[len(SCHEME) :].partition("/")
        return cls(bucket, key)

    @classmethod
    def from_setting(cls, text: str, setting: str) -> S3Uri:
        """``bucket[/prefix]``, with or without ``s3://`` (``ANALYSIS_BUCKET``, ``DISPATCH_INBOX``);
        slashes around bucket and prefix dropped. :class:`ValueError` naming ``setting`` if no bucket."""
        bucket, _, prefix = text.removeprefix(SCHEME).strip("/").partition("/")
        if not bucket:
            raise ValueError(f"{setting} {text!r} names no bucket")
        return cls(bucket, prefix.strip("/"))

    @property
    def prefix(self) -> str:
        """The key without slashes around it: a folder to put keys under."""
        return self.key.strip("/")

    def join(self, *parts: str) -> S3Uri:
        """The key ``<prefix>/<part>/…`` (empty parts left out)."""
        return S3Uri(self.bucket, "/".join(p for p in (self.prefix, *parts) if p))

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}" if self.key else f"{SCHEME}{self.bucket}"
