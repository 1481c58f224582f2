"""MkDocs hooks for pyneg's site (mkdocs.yml `hooks:`).

Some pages are written on other branches and merged later; while one is absent
its navigation entry is dropped (and said so) instead of failing the strict
build. Any other missing page still fails it. The reliability pages
(``reliability_*.md``, one per area) are listed on ``reliability.md`` and under it
in the navigation, whichever of them exist. API sections of modules that do
not exist yet (``::: pyneg.<module>``) are dropped likewise.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.pyneg")

OPTIONAL_PAGES = {"losses.md", "mining.md", "skipgram.md"}
RELIABILITY_MARKER = "<!-- reliability pages -->"


def _docs_dir(config) -> Path:
    return Path(config["docs_dir"])


def _reliability_pages(docs: Path) -> list[Path]:
    return sorted(docs.glob("reliability_*.md"))


def _title(page: Path) -> str:
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return page.stem.replace("reliability_", "").replace("_", " ").capitalize()


def _prune(nav: list, docs: Path) -> list:
    kept = []
    for entry in nav:
        if isinstance(entry, dict):
            (title, target), = entry.items()
            if isinstance(target, list):
                kept.append({title: _prune(target, docs)})
                continue
            if target in OPTIONAL_PAGES and not (docs / target).exists():
                log.info("optional page %s is not written yet: left out of the navigation", target)
                continue
            if target == "reliability.md" and _reliability_pages(docs):
                subpages = [{_title(p): p.name} for p in _reliability_pages(docs)]
                kept.append({title: [{"Overview": target}, *subpages]})
                continue
        kept.append(entry)
    return kept


def on_config(config):
    config["nav"] = _prune(config["nav"], _docs_dir(config))
    return config


def on_page_markdown(markdown: str, page, config, files) -> str:
    docs = _docs_dir(config)
    if page.file.src_uri == "reliability.md":
        pages = _reliability_pages(docs)
        listing = "\n".join(f"- [{_title(p)}]({p.name})" for p in pages) or "- (no area page yet)"
        markdown = markdown.replace(RELIABILITY_MARKER, listing)
    if page.file.src_uri == "api.md":
        root = docs.parent / "pyneg"

        def keep(match: re.Match) -> str:
            name = match.group(1).split(".")[1]
            if (root / f"{name}.py").exists() or (root / name / "__init__.py").exists():
                return match.group(0)
            log.info("module pyneg.%s does not exist yet: left out of the API reference", name)
            return ""

        markdown = re.sub(r"^## .*\n+::: (pyneg\.\w+)\n(?:    .*\n)*", keep, markdown, flags=re.M)
    return markdown
