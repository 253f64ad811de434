"""The committed front-end build (web/dist) matches its sources and is complete."""

import re

from web import bundle


def test_the_committed_build_was_made_from_the_sources_as_they_are():
    assert bundle.is_fresh(), (
        "web/dist is stale: web/src, package files or build.mjs changed since it was built; "
        "run `make web` and commit web/dist"
    )


def test_the_page_names_only_assets_that_exist():
    html = (bundle.DIST / "index.html").read_text(encoding="utf-8")
    named = re.findall(r'(?:src|href)="/assets/([^"]+)"', html)
    assert len(named) == 3  # script, stylesheet, icon
    for name in named:
        assert (bundle.DIST / "assets" / name).is_file(), name
    assert "<script>" not in html and "style=" not in html  # nothing inline: the CSP forbids it


def test_the_digest_changes_with_any_input(tmp_path, monkeypatch):
    for name in (*bundle.INPUT_FILES, "src/a.ts"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    monkeypatch.setattr(bundle, "ROOT", tmp_path)
    before = bundle.sources_digest()
    (tmp_path / "src" / "a.ts").write_text("y")
    assert bundle.sources_digest() != before
    (tmp_path / "src" / "a.ts").write_text("x")
    assert bundle.sources_digest() == before
    (tmp_path / "src" / "b.ts").write_text("x")
    assert bundle.sources_digest() != before
