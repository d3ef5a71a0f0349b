"""Copies a run or sweep report and the figures it links into docs/.

usage: python3 scripts/publish_report.py RUN_OR_SWEEP_DIR NAME
writes docs/NAME.md (the report, links rewritten) and docs/figures/NAME/*.png
"""
import os
import re
import shutil
import sys


def main():
    src, name = sys.argv[1], sys.argv[2]
    root = os.path.join(os.path.dirname(__file__), "..")
    with open(os.path.join(src, "report.md")) as f:
        text = f.read()
    figdir = os.path.join(root, "docs", "figures", name)
    os.makedirs(figdir, exist_ok=True)

    def copy(m):
        label, path = m.group(1), m.group(2)
        if "://" in path:
            return m.group(0)
        flat = re.sub(r"[^A-Za-z0-9._-]+", "_", path.replace("/figures/", "_").replace("figures/", ""))
        shutil.copyfile(os.path.join(src, path), os.path.join(figdir, flat))
        return f"![{label}](figures/{name}/{flat})"

    text = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", copy, text)
    with open(os.path.join(root, "docs", f"{name}.md"), "w") as f:
        f.write(text)
    print(f"docs/{name}.md and docs/figures/{name}/")


if __name__ == "__main__":
    main()
