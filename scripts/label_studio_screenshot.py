"""Screenshot of a Label Studio project's labelling view on a task with pre-annotations (docs).

Not part of the workflow: it needs playwright (PyPI) and a Chromium, e.g. Debian's
(`apt-get install chromium`; playwright's own browser download is not needed), in any Python:
    python scripts/label_studio_screenshot.py --url http://127.0.0.1:8080 --project toy-car \
        --out docs/label-studio-pre-annotations.png
It logs in as $LABEL_STUDIO_USERNAME / $LABEL_STUDIO_PASSWORD and opens the project's first
task that has a prediction and no annotation yet.
"""

import argparse
import os
import time

from playwright.sync_api import sync_playwright


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--project", required=True, help="the project's title")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--settle", type=float, default=5.0, help="seconds to let the editor draw the masks")
    a = p.parse_args()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=a.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 800})
        page.goto(f"{a.url}/user/login/")
        page.fill("input[name=email]", os.environ["LABEL_STUDIO_USERNAME"])
        page.fill("input[name=password]", os.environ["LABEL_STUDIO_PASSWORD"])
        page.click("button[type=submit]")
        page.wait_for_load_state("networkidle")
        project = next(x for x in page.request.get(f"{a.url}/api/projects/?page_size=1000").json()["results"]
                       if x["title"] == a.project)
        tasks = page.request.get(f"{a.url}/api/projects/{project['id']}/export",
                                 params={"exportType": "JSON", "download_all_tasks": "true"}).json()
        task = next(t for t in tasks if t["predictions"] and not t["annotations"])
        page.goto(f"{a.url}/projects/{project['id']}/data?task={task['id']}")
        page.wait_for_load_state("networkidle")
        time.sleep(a.settle)
        page.screenshot(path=a.out)
        browser.close()
    print(f"wrote {a.out}: project {a.project!r}, task {task['id']} ({task['data'].get('id')})")


if __name__ == "__main__":
    main()
