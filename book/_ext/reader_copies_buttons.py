"""The Colab button opens the chapter's reader's copy (a local Sphinx extension).

sphinx-book-theme's Colab launch button opens ``<path_to_book>/<page>.ipynb``: the chapter as the
book builds it, full of MyST roles that Colab shows as raw markup.  The readers' copies
(``colab/<page>.ipynb``, written by ``tools/reader_copies.py``) are the same chapters in plain
Markdown.  After the theme has made its buttons (``html-page-context``, a later priority), this
points every Colab button at the copy of its page; a page without a copy keeps its button as it was.
"""

from __future__ import annotations

from pathlib import Path

COPIES = "colab"  # the folder of the readers' copies, at the repository root


def colab_copy_url(url: str, pagename: str, book_path: str) -> str:
    """``url`` (``.../blob/<branch>/<book_path>/<page>.ipynb``) with the copy's path instead of the page's."""
    page = f"{book_path.strip('/')}/{pagename}.ipynb" if book_path.strip("/") else f"{pagename}.ipynb"
    if not url.endswith("/" + page):
        raise ValueError(f"the Colab button's address {url!r} does not end in the page's path {page!r}")
    return url[: -len(page)] + f"{COPIES}/{pagename}.ipynb"


def _retarget(app, pagename, templatename, context, doctree):
    repo_root = Path(app.confdir)
    while not (repo_root / COPIES).is_dir() and repo_root != repo_root.parent:
        repo_root = repo_root.parent
    if not (repo_root / COPIES / f"{pagename}.ipynb").is_file():
        return
    book_path = app.config.html_theme_options.get("path_to_docs", "")
    for group in context.get("header_buttons", []):
        for button in group.get("buttons", []) if isinstance(group, dict) else []:
            if button.get("text") == "Colab":
                button["url"] = colab_copy_url(button["url"], pagename, book_path)


def setup(app):
    app.connect("html-page-context", _retarget, priority=600)  # after the theme's buttons (501)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
