"""MkDocs hook: the reviewer's pages that live outside ``docs/`` join the site at their own path.

``SECURITY.md`` stays at the root of the repository and the runbooks stay in ``ops/``, where
reviewers and operators look for them; the site serves them as ``SECURITY.md`` and
``ops/*.md`` (with ``ops/verify_audit_chain.py``, which ``ops/AUDIT_FORMAT.md`` links to), so a
docs page links to them with the same relative path as from the root of the repository, and
``mkdocs build --strict`` checks those links like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

MIRRORED = ("SECURITY.md", "ops/*.md", "ops/verify_audit_chain.py")


def on_files(files: Files, config: Any) -> Files:
    root = Path(config.config_file_path).resolve().parent
    for pattern in MIRRORED:
        for path in sorted(root.glob(pattern)):
            files.append(File.generated(config, path.relative_to(root).as_posix(),
                                        abs_src_path=str(path)))
    return files
