"""The playground page in headless Chromium against a live ``serve --tiny`` (with an API key set).

One server and one browser profile for the module; per served endpoint: upload a sample through the
storage flow, run through the queue, see the result image load, see a 422 at its field, cancel a
queued job. Screenshots go to test-artifacts/playground/ (git-ignored).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from pipelines import registry
from tests.support.browser import chromium_context, screenshot
from tests.support.js import JS_DIR, requires_js_client
from tests.support.live_server import LiveServer
from tests.support.server_fixtures import png_data_uri, wait_completed

KEY = "playground-test-key"
AUTH = {"Authorization": f"Key {KEY}"}
KEY_STORAGE = "fal-onprem.api-key"  # server/playground/api.js
FAL_ENDPOINTS = sorted(e for e in registry.endpoints() if not e.startswith("test/"))
SERVE_TIMEOUT_S = 300.0
# Diffusion endpoints run at CPU-test cost: few steps, a small custom image_size (multiples of 8).
FEW_STEPS = "2"
SMALL_SIZE = {"width": "96", "height": "128"}
TERMINAL = "#status-line.completed, #status-line.error, #status-line.cancelled"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("playground"), env={"FAL_ONPREM_API_KEYS": KEY})
    live.start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def browser_context() -> Iterator[Any]:
    with chromium_context() as context:
        yield context


@pytest.fixture
def page(browser_context: Any) -> Iterator[Any]:
    """A new tab; any uncaught JavaScript error fails the test."""
    tab = browser_context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    tab.close()
    assert errors == []


def open_playground(page: Any, server: LiveServer, endpoint_id: str, key: str | None = KEY) -> None:
    page.goto(f"{server.url}/playground/{endpoint_id}")
    page.evaluate(
        "([name, key]) => key ? localStorage.setItem(name, key) : localStorage.removeItem(name)", [KEY_STORAGE, key]
    )
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    for fold in page.locator("details.more summary").all():  # "Additional settings": the tests use them all
        fold.click()


def readiness(server: LiveServer, endpoint_id: str) -> dict[str, Any]:
    """The endpoint's /readyz entry once it has settled (not loading), bounded in time."""
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    while True:
        entry = httpx.get(f"{server.url}/readyz", headers=AUTH, timeout=10).json()["pipelines"][endpoint_id]
        if entry["state"] != "loading" or time.monotonic() > deadline:
            return entry
        time.sleep(0.5)


def require_served(server: LiveServer, endpoint_id: str) -> None:
    """Skip endpoints this build does not serve; one that failed to load (or never loaded) is a failure."""
    entry = readiness(server, endpoint_id)
    if entry["state"] == "unavailable":
        pytest.skip(f"{endpoint_id} is not served by this build: {entry['reason']}")
    assert entry["state"] == "ready", f"{endpoint_id} did not load under --tiny: {entry}"


def fill_required(page: Any) -> list[str]:
    """Upload a sample into every required image field (through the page's storage flow) and fill
    required text fields; returns the image fields' paths."""
    paths = page.eval_on_selector_all(
        ".field-image", "els => els.filter(e => e.querySelector('label .req')).map(e => e.dataset.path)"
    )
    for path in paths:
        field = page.locator(f'.field[data-path="{path}"]')
        field.locator(".sample").first.click()
        field.locator(".upload-note", has_text="uploaded").wait_for()
        assert "/files/" in field.locator("input.image-url").input_value()
        page.wait_for_function(
            "p => { const img = document.querySelector(`.field[data-path='${p}'] img.preview`);"
            " return img && img.complete && img.naturalWidth > 0; }",
            arg=path,
        )
    for path in page.eval_on_selector_all(
        ".field-text, .field-textarea", "els => els.filter(e => e.querySelector('label .req')).map(e => e.dataset.path)"
    ):
        page.fill(f'.field[data-path="{path}"] input, .field[data-path="{path}"] textarea', "a portrait photo")
    for path in page.eval_on_selector_all(  # required choices without a default (CatVTON's cloth_type)
        ".field-enum",
        "els => els.filter(e => e.querySelector('label .req') && !e.querySelector('select').value)"
        ".map(e => e.dataset.path)",
    ):
        select = page.locator(f'.field[data-path="{path}"] select')
        select.select_option(select.locator("option").nth(1).get_attribute("value"))
    return paths


def make_cheap(page: Any) -> None:
    """Few steps and a small custom image_size where the form has them (the controls a user would use)."""
    steps = page.locator('.field[data-path="num_inference_steps"] input[type=number]')
    if steps.count():
        steps.fill(FEW_STEPS)
    size = page.locator('.field[data-path="image_size"]')
    if size.count():
        size.locator("select").select_option("custom")
        for key, value in SMALL_SIZE.items():
            size.locator(f'.dim[data-path="image_size.{key}"] input').fill(value)


def status_line(page: Any) -> str:
    return page.inner_text("#status-line")


@contextmanager
def worker_busy(server: LiveServer) -> Iterator[None]:
    """Keep the single CPU worker on a long test/echo job so that new jobs stay IN_QUEUE.

    The worker claims (prefetches) its next batch 0.1 s into a batch; waiting for the blocker's
    second step (1 s in) means that claim has come and gone, so nothing is claimed until it ends."""
    body = {"image_url": png_data_uri(), "steps": 1000, "step_ms": 500}
    blocker = httpx.post(f"{server.url}/queue/test/echo", json=body, headers=AUTH, timeout=10).json()
    deadline = time.monotonic() + 120
    seen: list[str] = []
    while not any(m.startswith("Step 2/") for m in seen):
        assert time.monotonic() < deadline, f"blocker never ran: {seen}"
        status = httpx.get(blocker["status_url"], params={"logs": "1"}, headers=AUTH, timeout=10).json()
        seen = [entry["message"] for entry in status.get("logs") or []]
        time.sleep(0.1)
    try:
        yield
    finally:
        httpx.put(blocker["cancel_url"], headers=AUTH, timeout=10)
        wait_completed(blocker["status_url"], headers=AUTH)


def test_api_key_is_asked_for_sent_and_remembered(server: LiveServer, page: Any) -> None:
    open_playground(page, server, "test/echo", key=None)
    page.fill('.field[data-path="image_url"] input.image-url', png_data_uri())
    page.click("#run")
    page.wait_for_selector("#form-error:not([hidden])")
    assert "API key" in page.inner_text("#form-error")
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.input_value("#api-key") == KEY  # kept in local storage
    page.fill('.field[data-path="image_url"] input.image-url', png_data_uri())
    page.click("#run")
    page.wait_for_selector("#result:not([hidden])")
    assert "Authorization: Key $FAL_KEY" in page.inner_text("#snippet")


def test_failed_jobs_show_their_422_at_the_field_or_the_error_with_the_request_id(
    server: LiveServer, page: Any
) -> None:
    open_playground(page, server, "test/echo")
    page.fill('.field[data-path="image_url"] input.image-url', png_data_uri())
    page.select_option('.field[data-path="fail"] select', "item")  # the worker refuses the image (422)
    page.click("#run")
    page.wait_for_selector(TERMINAL)
    assert status_line(page) == "Failed"
    assert page.inner_text('.field[data-path="image_url"] .field-error') == "echo refused this image"
    page.select_option('.field[data-path="fail"] select', "crash")  # the pipeline raises (500)
    page.click("#run")
    page.wait_for_selector("#form-error:not([hidden])")
    error = page.inner_text("#form-error")
    assert "Internal error: echo pipeline crashed on purpose (internal_server_error) · request id" in error
    assert page.inner_text('.field[data-path="image_url"] .field-error') == ""  # the last run's errors only


def test_leaving_a_running_request_resets_the_page_and_the_job_goes_on(server: LiveServer, page: Any) -> None:
    open_playground(page, server, "test/echo")
    page.fill('.field[data-path="image_url"] input.image-url', png_data_uri())
    page.fill('.field[data-path="steps"] input[type=number]', "50")  # 5 s: long enough to leave mid-run
    page.fill('.field[data-path="step_ms"] input[type=number]', "100")
    page.click("#run")
    page.wait_for_selector("#status-line:has-text('Running')")
    request_id = status_line(page).rsplit(" ", 1)[-1]
    page.click('#endpoint-list a[href="/playground/fal-ai/dwpose"]')
    page.wait_for_selector("#endpoint-title:has-text('fal-ai/dwpose')")
    assert page.url.endswith("/playground/fal-ai/dwpose")
    assert page.locator("#timeline li").count() == 0 and page.is_hidden("#logs-wrap")
    assert page.is_enabled("#run") and page.is_disabled("#cancel")
    done = wait_completed(f"{server.url}/queue/test/echo/requests/{request_id}/status", headers=AUTH)
    assert "error" not in done  # not cancelled: leaving the page is not a cancel
    assert page.locator("#timeline li").count() == 0 and page.is_hidden("#result")
    page.go_back()
    page.wait_for_selector("#endpoint-title:has-text('test/echo')")


@pytest.mark.parametrize("endpoint_id", FAL_ENDPOINTS)
def test_endpoint_runs_from_the_playground(server: LiveServer, page: Any, endpoint_id: str) -> None:
    require_served(server, endpoint_id)
    open_playground(page, server, endpoint_id)
    assert page.inner_text("#endpoint-state") == "ready"

    # upload a sample, run through the queue, see the result
    images = fill_required(page)
    assert images, "every endpoint takes at least one image"
    make_cheap(page)
    page.click("#run")
    page.wait_for_selector(TERMINAL, timeout=SERVE_TIMEOUT_S * 1000)
    error = page.inner_text("#form-error") if page.is_visible("#form-error") else ""
    assert status_line(page).startswith("Completed"), f"{status_line(page)}: {error}"
    page.wait_for_function(
        "() => [...document.querySelectorAll('#compare img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    assert page.locator("#compare figcaption", has_text="output:").count() >= 1
    assert page.locator("#compare figcaption", has_text="input:").count() == len(images)
    timeline = page.eval_on_selector_all("#timeline li", "lis => lis.map(li => li.dataset.status)")
    assert timeline[0] == "IN_QUEUE" and timeline[-1] == "COMPLETED"
    request_id = page.inner_text("#result-meta dd")
    app = "/".join(endpoint_id.split("/")[:2])
    status = httpx.get(f"{server.url}/queue/{app}/requests/{request_id}/status", headers=AUTH, timeout=10).json()
    assert status["status"] == "COMPLETED" and "error" not in status
    assert f"{status['metrics']['inference_time']:.3f} s" in page.inner_text("#result-meta")
    screenshot(page, f"{endpoint_id}-result")

    # a 422 at its fields: the required image left empty, a number over its maximum
    page.fill(f'.field[data-path="{images[0]}"] input.image-url', "")
    bounded = page.eval_on_selector_all(
        ".field-number", "els => els.filter(e => e.querySelector('input[max]')).map(e => e.dataset.path)"
    )
    if bounded:
        box = page.locator(f'.field[data-path="{bounded[0]}"] input[type=number]')
        box.fill(str(float(box.get_attribute("max") or 0) + 1))
    page.click("#run")
    page.wait_for_selector(f'.field[data-path="{images[0]}"].invalid')
    assert page.inner_text(f'.field[data-path="{images[0]}"] .field-error') != ""
    for path in bounded[:1]:
        assert "less than or equal" in page.inner_text(f'.field[data-path="{path}"] .field-error')
    assert status_line(page) == "Invalid input"
    screenshot(page, f"{endpoint_id}-422")

    # cancel a job while it waits in the queue
    page.click("#reset")
    fill_required(page)
    with worker_busy(server):
        page.click("#run")
        page.wait_for_selector("#status-line:has-text('In queue')")
        page.click("#cancel")
        page.wait_for_selector("#status-line:has-text('Cancelled')")
    screenshot(page, f"{endpoint_id}-cancelled")
    request_id = status_line(page).rsplit(" ", 1)[-1]
    status = httpx.get(f"{server.url}/queue/{app}/requests/{request_id}/status", headers=AUTH, timeout=10).json()
    assert status["error_type"] == "request_cancelled"
    assert "IN_PROGRESS" not in page.eval_on_selector_all("#timeline li", "lis => lis.map(li => li.dataset.status)")


# -- the generated form covers every field of every schema --------------------------------------------

FIELD_REPORT = """path => {
  const sel = CSS.escape(path);
  const wrapper = document.querySelector(`.field[data-path="${sel}"], .dim[data-path="${sel}"]`);
  if (!wrapper) return null;
  const label = wrapper.querySelector(':scope > label');
  const control = label && document.getElementById(label.htmlFor);
  return {
    kind: wrapper.dataset.kind || 'dim',
    labelled: Boolean(control && wrapper.contains(control)),
    required: Boolean(label && label.querySelector('.req')),
    tag: control && control.tagName.toLowerCase(),
    type: control && control.type,
    value: control && control.value,
    checked: control && control.checked,
    min: control && control.getAttribute('min'),
    max: control && control.getAttribute('max'),
    options: control && control.tagName === 'SELECT' ? [...control.options].map(o => o.value) : null,
    samples: wrapper.querySelectorAll('.sample').length,
    dropzone: Boolean(wrapper.querySelector('.dropzone')),
    items: wrapper.querySelectorAll(':scope .list-item').length,
  };
}"""


def resolve(openapi: dict[str, Any], node: Any) -> Any:
    if isinstance(node, list):
        return [resolve(openapi, n) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target: Any = openapi
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return resolve(openapi, {**target, **{k: v for k, v in node.items() if k != "$ref"}})
    return {k: resolve(openapi, v) for k, v in node.items()}


def input_schemas(openapi: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for path, item in openapi["paths"].items():
        if path.startswith("/queue/") and "post" in item and "requestBody" in item["post"]:
            schema = item["post"]["requestBody"]["content"]["application/json"]["schema"]
            out[path.removeprefix("/queue/")] = resolve(openapi, schema)
    return out


def number(text: str | None) -> float | None:
    return None if text in (None, "") else float(text)


def check_field(page: Any, path: str, prop: dict[str, Any], required: bool) -> None:
    report = page.evaluate(FIELD_REPORT, path)
    assert report is not None, f"no control for {path}"
    assert report["labelled"], f"{path}: control without a label"
    assert report["required"] == required, f"{path}: required marker"
    options = [o for o in prop.get("anyOf", [prop]) if o.get("type") != "null"]
    plain = {**options[0], **{k: v for k, v in prop.items() if k != "anyOf"}} if len(options) == 1 else prop
    default = prop.get("default")
    if any(o.get("type") == "object" for o in options) and any("enum" in o for o in options):  # image_size
        preset = next(o for o in options if "enum" in o)
        size = next(o for o in options if o.get("type") == "object")
        assert report["options"] == [*preset["enum"], "custom"], path
        assert report["value"] == (default if isinstance(default, str) else "custom"), path
        for key, sub in size["properties"].items():
            dim = page.evaluate(FIELD_REPORT, f"{path}.{key}")
            assert dim and dim["labelled"] and dim["type"] == "number", f"{path}.{key}"
            expected = default[key] if isinstance(default, dict) else sub.get("default")
            assert number(dim["value"]) == expected, f"{path}.{key}"
            assert number(dim["max"]) == sub.get("maximum"), f"{path}.{key}"
    elif "enum" in plain:
        assert report["tag"] == "select" and [o for o in report["options"] if o] == plain["enum"], path
        assert report["value"] == (default or ""), path
    elif plain.get("type") == "boolean":
        assert report["type"] == "checkbox" and report["checked"] == bool(default), path
    elif plain.get("type") in ("integer", "number"):
        assert report["type"] == "number", path
        assert number(report["value"]) == default, path
        assert number(report["min"]) == plain.get("minimum") and number(report["max"]) == plain.get("maximum"), path
    elif plain.get("type") == "string" and path.endswith("image_url"):
        assert report["dropzone"] and report["samples"] >= 1 and report["type"] == "text", path
    elif plain.get("type") == "string":
        assert report["tag"] in ("input", "textarea") and report["value"] == (default or ""), path
    elif plain.get("type") == "array":
        item = plain["items"]
        assert report["items"] >= max(plain.get("minItems", 0), 1), path
        for key, sub in item["properties"].items():
            check_field(page, f"{path}.0.{key}", sub, key in item.get("required", []))
    else:
        raise AssertionError(f"{path}: schema shape the test does not know: {plain}")


def test_form_has_a_control_for_every_field_of_every_schema(server: LiveServer, page: Any) -> None:
    schemas = input_schemas(httpx.get(f"{server.url}/openapi.json", timeout=10).json())
    assert set(FAL_ENDPOINTS) <= set(schemas)
    for endpoint_id in FAL_ENDPOINTS:
        schema = schemas[endpoint_id]
        open_playground(page, server, endpoint_id)
        required = set(schema.get("required", []))
        for name, prop in schema["properties"].items():
            check_field(page, name, prop, name in required)
        assert page.evaluate("[...document.getElementById('fields').childNodes].every(n => n.nodeType === 1)")
        if readiness(server, endpoint_id)["state"] == "unavailable":
            assert page.is_visible("#endpoint-reason") and page.is_disabled("#run")
        screenshot(page, f"{endpoint_id}-form")


# -- "copy as" code runs ------------------------------------------------------------------------------


def snippet(page: Any, tab: str) -> str:
    page.click(f'#snippet-tabs [data-snippet="{tab}"]')
    return page.inner_text("#snippet")


def test_copy_as_python_snippet_runs(server: LiveServer, page: Any) -> None:
    require_served(server, "fal-ai/dwpose")
    open_playground(page, server, "fal-ai/dwpose")
    fill_required(page)
    page.select_option('.field[data-path="draw_mode"] select', "full-pose")
    code = snippet(page, "Python")
    assert '"draw_mode": "full-pose"' in code and server.url in code
    env = {**os.environ, "FAL_KEY": KEY}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "'content_type': 'image/png'" in proc.stdout


@requires_js_client
def test_copy_as_javascript_snippet_runs(server: LiveServer, page: Any) -> None:
    require_served(server, "fal-ai/dwpose")
    open_playground(page, server, "fal-ai/dwpose")
    fill_required(page)
    script = JS_DIR / "_playground_snippet.mjs"  # inside tests/js so that @fal-ai/client resolves
    script.write_text(snippet(page, "JavaScript"))
    try:
        env = {**os.environ, "FAL_KEY": KEY}
        proc = subprocess.run(["node", script.name], cwd=JS_DIR, env=env, capture_output=True, text=True, timeout=300)
    finally:
        script.unlink()
    assert proc.returncode == 0, proc.stderr
    assert "COMPLETED" in proc.stdout and "image/png" in proc.stdout
