import base64
import json
from html.parser import HTMLParser

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from balancedet.analysis.report import Section, jsonable, write_html, write_json  # noqa: E402


class Page(HTMLParser):
    """The page's headings (``h1``/``h2`` text), section ids and image sources."""

    def __init__(self):
        super().__init__()
        self.headings, self.sections, self.images, self._in = [], [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("h1", "h2"):
            self._in = tag
        if tag == "section":
            self.sections.append(attrs["id"])
        if tag == "img":
            self.images.append(attrs["src"])

    def handle_endtag(self, tag):
        if tag == self._in:
            self._in = None

    def handle_data(self, data):
        if self._in:
            self.headings.append(data)


def parse(path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def png(path):
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    fig.savefig(path)
    plt.close(fig)
    return path


def test_html_embeds_every_image_and_escapes_text(tmp_path):
    sections = [
        Section("a", "First <one>", ["x < y & z"], [["k", "v"], ["1", "2"]], [png(tmp_path / "a.png")]),
        Section("b", "Second", images=[png(tmp_path / "b.png"), png(tmp_path / "c.png")]),
    ]
    write_html("Report", ["intro"], sections, tmp_path / "report.html")
    page = parse(tmp_path / "report.html")
    assert page.headings == ["Report", "First <one>", "Second"]
    assert page.sections == ["a", "b"]
    assert len(page.images) == 3
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_has_no_nan(tmp_path):
    write_json({"a": float("nan"), "b": (1.0, float("inf")), "c": {"d": 2}}, tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [1.0, None], "c": {"d": 2}}
    assert jsonable([float("-inf")]) == [None]
