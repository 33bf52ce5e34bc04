"""Blocks every app uses, one of each: the error shape (``errors``), the scoped API viewset
(``api_base``) and page helpers (``views_base``), API pagination (``pagination``), stored files
(``storage``), user paths (``paths``), live-log chunks and their ``{text, offset, done}`` reader
(``logs``), and numbering under the workspace's lock (``numbering``).

Not a Django app: no models of its own (``logs.LogChunk`` is abstract), no migrations.
"""
