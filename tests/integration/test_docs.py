"""docs/CLI.md documents every error code the code can throw."""
import os
import re

from conftest import ROOT


def documented(code, text):
    """`A.B` is documented as itself, or as `.B` on a line that names another `A.` code."""
    if f"`{code}`" in text:
        return True
    head, _, tail = code.partition(".")
    return any(f"`.{tail}`" in line and f"`{head}." in line for line in text.splitlines())


def test_every_error_code_in_the_sources_is_in_the_cli_documents_table():
    with open(os.path.join(ROOT, "docs", "CLI.md")) as f:
        text = f.read()
    codes = set()
    for folder, _, files in os.walk(os.path.join(ROOT, "Sources")):
        for name in files:
            if name.endswith(".swift"):
                with open(os.path.join(folder, name)) as f:
                    codes |= set(re.findall(r'"([A-Z][A-Za-z0-9]*(?:\.[A-Z][A-Za-z0-9]*)+)"', f.read()))
    assert len(codes) > 50, "the scan found too few codes to be looking at the right files"
    missing = sorted(c for c in codes if not documented(c, text))
    assert missing == [], f"codes thrown but not in docs/CLI.md: {missing}"
