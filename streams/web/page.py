"""What the pages of ``streamdl serve`` share: the start of an HTML document and its common inline CSS."""

from __future__ import annotations

COMMON_CSS = """\
  :root { --fg: #1d2330; --muted: #667085; --line: #d9dee7; --accent: #2f6fde; --bad: #b42318; --bg: #f6f7f9; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
         background: var(--bg); }
  header { padding: 14px 24px; background: #fff; border-bottom: 1px solid var(--line); }
  header h1 { margin: 0; font-size: 18px; }
  header p { margin: 2px 0 0; color: var(--muted); }
  header a { color: var(--accent); }
  main { padding: 16px 24px; }
  form { display: flex; flex-wrap: wrap; gap: 12px 18px; align-items: flex-end; background: #fff;
         border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px; }
  #status { margin: 12px 0 0; color: var(--muted); min-height: 1.4em; }
  #error { margin: 12px 0 0; padding: 10px 12px; border: 1px solid var(--bad); border-radius: 6px; background: #fef3f2;
           color: var(--bad); white-space: pre-wrap; }
  #error[hidden] { display: none; }
"""


def page_head(title: str) -> str:
    """The document up to inside its ``<style>`` element, with :data:`COMMON_CSS`; the page adds its own rules
    and closes the element."""
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>streamdl - {title}</title>\n<style>\n{COMMON_CSS}"
    )
