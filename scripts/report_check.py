"""The browser checks of scripts/report-check: report_check.py REPORT_HTML OUT_DIR.

Opens REPORT_HTML in headless Chromium (Debian's /usr/bin/chromium and /usr/bin/chromedriver,
never a downloaded one) at 1400x900, prints every failure, saves OUT_DIR/report.png (first
screen) and OUT_DIR/report-full.png (whole page), and exits 1 if anything failed.
"""

import os
import re
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

WIDTH, HEIGHT, FULL_MAX = 1400, 900, 20000
MAX_BYTES = 2 * 1024 * 1024
MIN_FONT_PX = 11

html_path, out = os.path.abspath(sys.argv[1]), sys.argv[2]
failures, warnings = [], []
os.environ["SE_OFFLINE"] = "true"  # Selenium Manager, should it run at all, downloads nothing

# The page file: size, and no src/href that points off the page.
size = os.path.getsize(html_path)
if size >= MAX_BYTES:
    failures.append(f"page size: {size} bytes, over the limit of {MAX_BYTES} (2 MiB)")
source = open(html_path, encoding="utf-8").read()
external = re.findall(r"""\b(?:src|href)\s*=\s*["']?\s*(https?://[^"'\s>]*)""", source, re.I)
for url in external:
    failures.append(f"external reference in a src/href attribute: {url}")

options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars",
            "--disable-gpu", f"--window-size={WIDTH},{HEIGHT}", "--force-device-scale-factor=1"]:
    options.add_argument(arg)
options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)


def set_viewport(width, height):
    """The window sized so that the page itself (the viewport) gets width x height."""
    driver.set_window_size(width, height)
    inner_w, inner_h = driver.execute_script("return [innerWidth, innerHeight]")
    if (inner_w, inner_h) != (width, height):
        driver.set_window_size(max(width, 2 * width - inner_w), max(height, 2 * height - inner_h))


try:
    set_viewport(WIDTH, HEIGHT)
    driver.get("file://" + html_path)
    driver.execute_async_script(  # images decoded and fonts ready before anything is measured
        "const done = arguments[0];"
        "Promise.all([document.fonts.ready, ...Array.from(document.images, i => i.decode().catch(() => 0))])"
        ".then(() => requestAnimationFrame(() => done()));")
    viewport = driver.execute_script("return [innerWidth, innerHeight]")

    resources = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    for name in resources:
        if not name.startswith(("data:", "file:")):
            failures.append(f"external request: {name}")

    figures = driver.execute_script("""
      return Array.from(document.querySelectorAll('figure'), (f, i) => {
        const cap = (f.querySelector('figcaption') || {}).textContent || '';
        const shown = Array.from(f.querySelectorAll('svg, img')).filter(e => {
          const r = e.getBoundingClientRect();
          return r.width > 0 && r.height > 0 && (e.tagName !== 'IMG' || (e.complete && e.naturalWidth > 0));
        });
        const broken = Array.from(f.querySelectorAll('img'))
          .filter(e => !e.complete || e.naturalWidth === 0).map(e => e.src.slice(0, 60));
        return {i, cap: cap.trim().slice(0, 80), shown: shown.length, broken};
      });""")
    for f in figures:
        if not f["shown"]:
            failures.append(f"figure {f['i']} ({f['cap']!r}): no <svg> or <img> with a non-zero size")
        for src in f["broken"]:
            failures.append(f"figure {f['i']} ({f['cap']!r}): image not loaded: {src}")
    broken_imgs = driver.execute_script(
        "return Array.from(document.images).filter(e => !e.complete || e.naturalWidth === 0)"
        ".filter(e => !e.closest('figure')).map(e => e.src.slice(0, 60))")
    for src in broken_imgs:
        failures.append(f"image not loaded: {src}")

    cells = driver.execute_script("""
      const out = []; let n = 0;
      document.querySelectorAll('table').forEach((t, ti) => Array.from(t.rows).forEach((r, ri) =>
        Array.from(r.cells).forEach((c, ci) => {
          n++;
          if (c.scrollWidth > c.clientWidth)
            out.push({ti, ri, ci, sw: c.scrollWidth, cw: c.clientWidth,
                      text: c.textContent.trim().replace(/\\s+/g, ' ').slice(0, 80)});
        })));
      return {n, tables: document.querySelectorAll('table').length, out};""")
    for c in cells["out"]:
        failures.append(f"table {c['ti']} row {c['ri']} column {c['ci']}: content {c['sw']} px wide "
                        f"in a {c['cw']} px cell: {c['text']!r}")

    wide = driver.execute_script("""  // a shown table wider than the page column (it would scroll sideways)
      return Array.from(document.querySelectorAll('table'), (t, i) => {
        const box = t.parentElement, w = t.getBoundingClientRect().width;
        return {i, w, cw: box.clientWidth, shown: w > 0, cap: t.rows[0] ? t.rows[0].textContent.trim().slice(0, 40) : ''};
      }).filter(t => t.shown && t.w > t.cw + 1);""")
    for t in wide:
        failures.append(f"table {t['i']} ({t['cap']!r}): {t['w']:.0f} px wide in a {t['cw']} px column (scrolls sideways)")

    for id_ in ["run-card", "summary"]:
        top = driver.execute_script(
            "const e = document.getElementById(arguments[0]);"
            "return e ? e.getBoundingClientRect().top + scrollY : null", id_)
        if top is None:
            failures.append(f"#{id_}: missing (no element with id {id_!r})")
        elif top >= HEIGHT:
            failures.append(f"#{id_}: top at {top:.0f} px, below the fold ({HEIGHT} px)")

    small = driver.execute_script("""  // font-size times the SVG's scale on screen
      return Array.from(document.querySelectorAll('figure'), (f, i) => {
        const px = Array.from(f.querySelectorAll('svg text'), t => {
          const m = t.getScreenCTM();
          return [parseFloat(getComputedStyle(t).fontSize) * (m ? Math.hypot(m.a, m.b) : 1), t.textContent.trim()];
        }).filter(([px, s]) => s && px < arguments[0]);
        const cap = ((f.querySelector('figcaption') || {}).textContent || '').trim().slice(0, 60);
        return {i, cap, n: px.length, min: Math.min(...px.map(p => p[0])), e: px.length ? px[0][1].slice(0, 30) : ''};
      }).filter(f => f.n);""", MIN_FONT_PX)
    for f in small:
        failures.append(f"figure {f['i']} ({f['cap']!r}): {f['n']} SVG text(s) rendered under {MIN_FONT_PX} px "
                        f"(smallest {f['min']:.1f} px; e.g. {f['e']!r})")

    driver.save_screenshot(os.path.join(out, "report.png"))
    height = min(max(driver.execute_script("return document.body.scrollHeight"), HEIGHT), FULL_MAX)
    set_viewport(WIDTH, height)
    driver.save_screenshot(os.path.join(out, "report-full.png"))

    # Last, so that errors raised while measuring and resizing are caught too.
    for entry in driver.get_log("browser"):
        if entry["level"] == "SEVERE":
            failures.append(f"console error: {entry['message']}")
finally:
    driver.quit()

for w in warnings:
    print(f"report-check: warning: {w}")
for f in failures:
    print(f"report-check: FAIL: {f}")
print(f"report-check: {html_path} at {viewport[0]}x{viewport[1]}: checked console errors, "
      f"{len(resources)} resource request(s) and {len(external)} external src/href, {len(figures)} figure(s), "
      f"{cells['n']} cell(s) in {cells['tables']} table(s), #run-card and #summary above the fold, "
      f"size {size / 1024:.0f} KiB of 2 MiB: {len(failures)} failure(s), {len(warnings)} warning(s); "
      f"screenshots {out}/report.png and report-full.png")
sys.exit(1 if failures else 0)
