"""The documentation that is generated stays current, and the README stays a front door."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cli_docs():
    spec = importlib.util.spec_from_file_location("cli_docs", ROOT / "scripts" / "cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_what_the_parsers_say(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # the generator sets it; keep the test's environment clean after
    page = (ROOT / "docs" / "cli.md").read_text()
    assert page == _cli_docs().cli_page(), "docs/cli.md is out of date: run python scripts/cli_docs.py"
    for flag in ("--concept-binding", "--concept-schedule", "--binding", "--no-train-token", "--motion-lora"):
        assert flag in page


def test_readme_is_short_and_its_links_resolve():
    import re

    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) < 6 * 1024
    links = re.findall(r"\]\(((?:docs|examples|configs|scripts)/[^)#]+)", readme)
    assert links and all((ROOT / link).exists() for link in links), [l for l in links if not (ROOT / l).exists()]


def test_architecture_module_map_names_every_module():
    """docs/architecture.md is the map a newcomer reads: every module and package of cdvideo is on it."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    package = ROOT / "cdvideo"
    missing = [f"cdvideo/{p.name}" for p in sorted(package.iterdir())
               if (p.suffix == ".py" and p.stem not in ("__init__", "__main__") or (p / "__init__.py").is_file())
               and f"cdvideo/{p.name}" not in page]
    missing += [f"{p.parent.name}/{p.name}" for p in sorted(package.glob("*/*.py"))
                if p.stem != "__init__" and p.parent.name in ("models", "shapes", "formats")
                and p.stem not in page]
    assert missing == []
