"""docs/requirements.md and the files that cite it agree (REQ-OPS-13, REQ-COMP-2).

Every requirement id is well formed and defined once; every id cited anywhere in the
repository is defined; every path and compliance check a requirement names as its
verification exists; every compliance check's rationale and every checklist item's
source cites a requirement; and no file cites documents outside the repository (the
texts this project was first written from, or issue numbers): what reaches auditors
and readers must be checkable here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml


def _root() -> Path:
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    raise AssertionError("no pyproject.toml above this test")


ROOT = _root()
DOC = ROOT / "docs" / "requirements.md"

ID = re.compile(r"REQ-[A-Z]+-[1-9][0-9]*")
AREA = re.compile(r"REQ-[A-Z]+")
# Anything written like an id, well formed or not: REQ- then an upper-case area.
ID_LIKE = re.compile(r"\bREQ-[A-Z][A-Za-z0-9-]*")
DEFINED = re.compile(r"^- \*\*(?P<id>REQ-[^*]+)\*\*", re.MULTILINE)

# Citations of documents outside the repository: the texts this project was first
# written from are not in it, so a numbered reference to one of them, its path or "the
# <name>'s thresholds" says nothing a reader can check; neither does an issue number.
# (The examples below spell the words in two halves, so this file passes its own test.)
NAME, ISSUE = "se" + "ed", "iss" + "ue"
OUTSIDE_REFERENCES = {
    "a numbered source text": re.compile(r"\bseeds?(?:'s|s')?[\s_#-]*[0-9]", re.IGNORECASE),
    "a source text's path": re.compile(r"\bseeds?/", re.IGNORECASE),
    "the source texts": re.compile(r"\bthe\s+seeds?(?:'s|s')?\b", re.IGNORECASE),
    "an issue number": re.compile(r"\bissue\s*#?\s*[0-9]|\bissues\s+#[0-9]", re.IGNORECASE),
}

SKIP_DIRS = {
    ".git",
    ".ansible",
    ".venv",
    "output",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    ".state",
    "node_modules",
    "build",
    "dist",
}
MAX_BYTES = 2_000_000


def repository_files() -> list[Path]:
    """The repository's files: tracked or new, never what .gitignore leaves out (virtualenvs,
    output, caches); without git, a walk that skips the same directories."""
    git = shutil.which("git")
    if git and (ROOT / ".git").exists():
        listed = subprocess.run(
            [git, "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
        ).stdout.decode()
        return sorted(Path(name) for name in listed.split("\0") if name)
    files = []
    for directory, subdirectories, names in os.walk(ROOT):
        # Pruned in place, so that virtualenvs and output are never walked at all.
        subdirectories[:] = [
            d for d in subdirectories if d not in SKIP_DIRS and not d.endswith(".egg-info")
        ]
        files += [Path(directory, name).relative_to(ROOT) for name in names]
    return sorted(files)


def repository_texts() -> list[tuple[Path, str]]:
    """Every text file of the repository, outside version control and generated output."""
    texts = []
    for relative in repository_files():
        path = ROOT / relative
        if not path.is_file() or path.stat().st_size > MAX_BYTES:
            continue
        try:
            texts.append((relative, path.read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            continue  # binary
    return texts


def requirement_blocks() -> dict[str, str]:
    """Requirement id -> its text (statement and "Verified by")."""
    text = DOC.read_text(encoding="utf-8")
    matches = list(DEFINED.finditer(text))
    blocks: dict[str, str] = {}
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        end = following.start() if following else len(text)
        block = text[match.end() : end].split("\n## ", 1)[0]
        assert match["id"] not in blocks, f"{match['id']} is defined twice"
        blocks[match["id"]] = block
    return blocks


def cites_a_requirement(token: str, defined: set[str]) -> bool:
    """A defined id, or the name of an area that has requirements (REQ-HARD)."""
    if AREA.fullmatch(token):
        return any(i.startswith(f"{token}-") for i in defined)
    return token in defined


def test_ids_are_well_formed_and_unique() -> None:
    text = DOC.read_text(encoding="utf-8")
    defined = DEFINED.findall(text)
    assert len(defined) >= 50
    assert [i for i in defined if not ID.fullmatch(i)] == []
    assert sorted({i for i in defined if defined.count(i) > 1}) == []
    malformed = [t for t in ID_LIKE.findall(text) if not (ID.fullmatch(t) or AREA.fullmatch(t))]
    assert malformed == []


def test_every_requirement_says_how_it_is_verified() -> None:
    missing = [i for i, block in requirement_blocks().items() if "Verified by:" not in block]
    assert missing == []


def test_what_verifies_a_requirement_exists() -> None:
    checks = {check["id"] for check, _ in compliance_checks()}
    missing = []
    for requirement, block in requirement_blocks().items():
        verified = block.split("Verified by:", 1)[1]
        for token in re.findall(r"`([^`]+)`", verified):
            if "/" in token and not token.startswith("-"):
                if not (ROOT / token).exists():
                    missing.append(f"{requirement}: {token}")
            elif re.fullmatch(r"[a-z0-9_]+\.[a-z0-9_.]+", token) and token not in checks:
                missing.append(f"{requirement}: check {token}")
    assert missing == []


def test_every_cited_id_is_defined() -> None:
    defined = set(requirement_blocks())
    unknown = []
    for path, text in repository_texts():
        for line_number, line in enumerate(text.splitlines(), 1):
            for token in ID_LIKE.findall(line):
                if not cites_a_requirement(token, defined):
                    unknown.append(f"{path}:{line_number}: {token}")
    assert unknown == []


def test_no_file_cites_documents_outside_the_repository() -> None:
    found = []
    for path, text in repository_texts():
        for what, pattern in OUTSIDE_REFERENCES.items():
            for match in pattern.finditer(text):
                line_number = text.count("\n", 0, match.start()) + 1
                found.append(f"{path}:{line_number}: {what}: {match.group(0)!r}")
    assert found == []


@pytest.mark.parametrize(
    ("text", "found"),
    [
        (f"# {NAME} 001 3.3: AES-GCM", True),
        (f"({NAME}\n000 6.2)", True),
        (f"{NAME.upper()}_001_SEGMENTS = {{}}", True),
        (f"see {NAME}s/001.txt", True),
        (f"the {NAME}'s thresholds", True),
        (f"what the {NAME}s require", True),
        (f"The service ({ISSUE} 6) wires it", True),
        (f"Target ({ISSUE} #8)", True),
        (f"random.{NAME}(3)", False),
        ("the CA issues 90-day certificates", False),
        ("REQ-AUDIT-3: secrets never in clear", False),
    ],
)
def test_the_outside_reference_patterns(text: str, found: bool) -> None:
    assert any(p.search(text) for p in OUTSIDE_REFERENCES.values()) is found


def compliance_checks() -> list[tuple[dict, Path]]:
    """Check definitions: the YAML lists under compliance/ whose entries have a rationale."""
    checks = []
    for path in sorted((ROOT / "compliance").rglob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(data, list):
            checks += [
                (entry, path) for entry in data if isinstance(entry, dict) and "rationale" in entry
            ]
    return checks


def test_every_check_rationale_cites_a_requirement() -> None:
    checks = compliance_checks()
    assert len(checks) >= 20
    uncited = [
        f"{path.name}: {check['id']}"
        for check, path in checks
        if not ID.search(str(check["rationale"]))
    ]
    assert uncited == []


def test_every_checklist_item_cites_a_requirement() -> None:
    items = []
    for path in sorted((ROOT / "compliance").rglob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "checklist" in data:
            items += [(path.name, item) for item in data["items"]]
    assert len(items) >= 21
    uncited = [f"{name}: {item['id']}" for name, item in items if not ID.search(item["source"])]
    assert uncited == []


# Texts that reach every evidence bundle and its auditor - a check's rationale, a
# checklist item's source, the reason a control does not apply - cite this project's
# requirement ids and the frameworks' controls only: never another document, which the
# bundle does not hold (a benchmark, another standard, a web page, a description the
# repository does not have).
OTHER_DOCUMENTS = re.compile(
    r"\b(?:CIS|NIST|OWASP|PCI|RFC\s*[0-9]+|benchmark|system description)\b|https?://",
    re.IGNORECASE,
)


def test_auditor_facing_texts_cite_no_other_document() -> None:
    texts = [(f"check {c['id']}: rationale", str(c["rationale"])) for c, _ in compliance_checks()]
    for path in sorted((ROOT / "compliance" / "checklists").glob("*.yaml")):
        for item in yaml.safe_load(path.read_text(encoding="utf-8"))["items"]:
            texts.append((f"{path.name}: {item['id']}: source", str(item["source"])))
    applicability = yaml.safe_load((ROOT / "compliance" / "applicability.yaml").read_text())
    for framework, reasons in applicability.items():
        texts += [(f"{framework} {c}: not applicable", str(r)) for c, r in reasons.items()]
    assert len(texts) > 50
    cited = [f"{where}: {m.group(0)!r}" for where, t in texts for m in OTHER_DOCUMENTS.finditer(t)]
    assert cited == []
