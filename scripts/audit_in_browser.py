"""Open an audit report (``retriever-forge audit ... --out audit.html``) in headless Debian chromium,
save a full-page screenshot, and print what the browser rendered: the lineage graph's nodes, the
verified and mismatch marks, the prompts and the sample tables.

Exits non-zero when the rendered page lacks the graph or a section, so it can back a claim that
the report reads in a real browser, not only as a string.

Usage::

    .venv/bin/python scripts/audit_in_browser.py audit.html --screenshot audit.png
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

# What the page holds, measured by the browser after layout (not by parsing the HTML).
RENDERED = """
const visible = el => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
const svg = document.querySelector('.graph svg');
const text = s => [...document.querySelectorAll(s)].filter(visible).map(e => e.innerText.trim());
const section = h => { const el = [...document.querySelectorAll('h2')].find(e => e.innerText.trim() === h); return !!el && visible(el); };
return {
  title: document.title,
  graph: svg ? {width: svg.getBoundingClientRect().width, height: svg.getBoundingClientRect().height,
                nodes: [...svg.querySelectorAll('text')].map(t => t.textContent).filter(t => t && !t.startsWith('✔') && !t.startsWith('✘'))} : null,
  verified: text('.pass').filter(t => t.includes('verified')).length,
  mismatches: text('.fail').filter(t => t.includes('MISMATCH')).length,
  banner: text('.banner').join(' | '),
  sections: Object.fromEntries(['Lineage', 'Scoreboard', 'Asset checks', 'Samples', 'Artifacts'].map(h => [h, section(h)])),
  prompts: text('pre').filter(t => t && t !== '(not available)').length,
  sample_tables: (() => { const out = []; let el = [...document.querySelectorAll('h2')].find(e => e.innerText.trim() === 'Samples');
    for (el = el && el.nextElementSibling; el && el.tagName !== 'H2'; el = el.nextElementSibling) {
      const h = el.querySelector('h3'); if (h && visible(h)) out.push(h.innerText.trim() + ' (' + el.querySelectorAll('tr').length + ' rows)'); }
    return out; })(),
  page_height: document.documentElement.scrollHeight,
};
"""


def chromium_driver(width: int = 1400, height: int = 1000):
    """Headless Debian chromium through its chromedriver (selenium); also used by tests/test_ui.py."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}", "--disable-gpu"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=options)


def render(html: Path, screenshot: Path | None = None, width: int = 1400) -> dict:
    """Load ``html`` in headless chromium and return what it rendered (see :data:`RENDERED`)."""
    driver = chromium_driver(width)
    try:
        driver.get(html.resolve().as_uri())
        seen = driver.execute_script(RENDERED)
        if screenshot is not None:  # the whole page, not only the first screen
            driver.set_window_size(width, min(int(seen["page_height"]) + 50, 16000))
            driver.save_screenshot(str(screenshot))
        return seen
    finally:
        driver.quit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args(argv)
    seen = render(args.html, args.screenshot)
    print(json.dumps(seen, indent=1, ensure_ascii=False))
    missing = [h for h, shown in seen["sections"].items() if not shown and h != "Scoreboard"]
    if not seen["graph"] or not seen["graph"]["nodes"] or missing:
        print(f"incomplete render: graph={bool(seen['graph'])}, missing sections {missing}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
