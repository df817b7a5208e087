"""The repository is complete on its own: every file the code, tests, benches and docs cite is in it."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CITED = re.compile(r"(?<![\w/.])((?:docs|jepa_fast|bench|tools|tests|preprocessing)/[\w./-]*\w"
                   r"\.(?:py|md|sh|json|txt|lock))")


def _sources():
    for pattern in ("*.py", "*.md", "*.sh", "*.toml", "Makefile"):
        for p in REPO.rglob(pattern):
            if not {".git", "build", ".venv", ".gpu"} & set(p.relative_to(REPO).parts) and "egg-info" not in str(p):
                yield p


EXTERNAL = {"docs/PERF_NOTES.md", "docs/TWO_ROOMS.md"}
"""Research notes whose paths are other projects' files (repo:path citations), not ours."""


def test_every_cited_file_exists():
    missing = sorted({(str(p.relative_to(REPO)), m) for p in _sources() if str(p.relative_to(REPO)) not in EXTERNAL
                      for m in CITED.findall(p.read_text()) if not (REPO / m).exists()})
    assert not missing, missing


def test_no_file_cites_documents_outside_the_repository():
    outside = sorted(str(p.relative_to(REPO)) for p in _sources() if p.name != "test_docs.py"
                     and re.search(r"shared/docs|TWO_ROOMS_SPEC", p.read_text()))
    assert not outside, outside


def test_the_readmes_meta_json_example_is_accepted():
    """The meta.json the README shows is valid JSON and a valid meta: its flip rules fit its own targets."""
    import json

    from jepa_fast.data.source import apply_meta

    blocks = re.findall(r"```json\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert blocks, "the README shows a meta.json"
    for block in blocks:
        meta = json.loads(re.sub(r"\n\s*", " ", block))
        names = tuple(meta["target_names"])
        channels, targets, flips = apply_meta(meta, REPO / "README.md", 3, 2, names, None, {})
        assert channels == tuple(meta["channel_names"]) and targets == names and set(flips) == {"lr", "ud"}
