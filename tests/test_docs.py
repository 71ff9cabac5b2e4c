"""The README, the docs and the model card, read as a new user reads them: short, links that resolve,
the card reproducible from weights/, and written about the product, not about how it was built."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CARD_MAX_LINES = 300
README_MAX_LINES = 180
CARD_SECTIONS = ("## Model details", "## Intended use", "## Training data", "## Evaluation data",
                 "## Results at a glance", "## Calibration", "## Limitations and ethical considerations",
                 "## How to reproduce")
# Words about how the repository was worked on, not about what derm does. Spelled in pieces so that
# this file does not match itself; "session" is allowed only as Streamlit's, pytest's or a process's.
PROCESS_WORDS = re.compile("|".join([
    r"\ble" r"nt\b", r"\biss" r"ues? #?[0-9]+", r"(?:^|[\s(])#[0-9]+\b", r"\bdev" r"ice.? tool", r"\bwork" r"place",
    r"(?<![\"'])(?<!browser )(?<!process )\bsess" r"ions?\b", r"\bfar" r"m-", r"\bsub" r"agent", r"\bwork" r"tree",
    r"\bthe iss" r"ue\b",
]), re.IGNORECASE)
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [REPO / line for line in out.splitlines() if line]


def test_the_process_word_pattern_catches_what_it_should():
    assert PROCESS_WORDS.search("trained on a " + "le" "nt H200") and PROCESS_WORDS.search("see " + "iss" "ue 11")
    assert PROCESS_WORDS.search("the next " + "sess" "ion ships it") and PROCESS_WORDS.search("fixed in " + "#" "12")
    assert not PROCESS_WORDS.search('st.session_state["x"]; @pytest.fixture(scope="session"); start_new_session=True')
    assert not PROCESS_WORDS.search("kept per browser session; color=\"#999\"") and not PROCESS_WORDS.search("silent")


def test_no_tracked_text_file_speaks_of_how_the_repository_was_worked_on():
    hits = [f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]}"
            for path in tracked("*.md", "*.py", "*.toml", "*.sh", "*.txt") if path.is_file()
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if PROCESS_WORDS.search(line)]
    assert not hits, "\n".join(hits)


def test_model_card_is_short_and_has_the_sections_of_a_model_card():
    card = (REPO / "MODEL_CARD.md").read_text()
    assert len(card.splitlines()) <= CARD_MAX_LINES
    positions = [card.find(section) for section in CARD_SECTIONS]
    assert -1 not in positions and positions == sorted(positions), dict(zip(CARD_SECTIONS, positions))


def test_model_card_is_what_derm_card_writes_from_weights(tmp_path):
    out = tmp_path / "card.md"
    done = subprocess.run([sys.executable, "-m", "derm", "card", "--out", str(out)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == (REPO / "MODEL_CARD.md").read_bytes(), "run `python -m derm card` and commit MODEL_CARD.md"


def test_readme_is_short_and_holds_the_commands_a_newcomer_needs():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    for command in ("pip install -r requirements.txt", "streamlit run streamlit_app.py", "python -m pytest -q"):
        assert command in readme


def broken_links(path: Path) -> list[str]:
    """Relative links of a markdown file whose target does not exist (anchors and web links are not checked)."""
    links = [link.split("#")[0] for link in MARKDOWN_LINK.findall(path.read_text())
             if not re.match(r"[a-z]+:", link) and not link.startswith("#")]
    return [link for link in links if link and not (path.parent / link).exists()]


@pytest.mark.parametrize("page", ["README.md", "MODEL_CARD.md", *sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))])
def test_every_relative_link_resolves(page):
    assert not broken_links(REPO / page), page


def test_the_link_check_sees_a_broken_link(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "data.md").write_text("# data")
    page = tmp_path / "README.md"
    page.write_text("[data](docs/data.md#layout), [gone](docs/gone.md), [web](https://x.org), [top](#top)")
    assert broken_links(page) == ["docs/gone.md"]
