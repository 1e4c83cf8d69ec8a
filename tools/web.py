"""A chat page (Gradio's ChatInterface) for an OpenAI-compatible server such as ``python -m tools.serve``.

    python -m tools.web --base_url http://127.0.0.1:8000/v1            # -> web page: http://127.0.0.1:7860/
    python -m tools.chat_launcher --model_name_or_path results/dpo     # the server and this page together

Answers stream in through the ``openai`` client; the conversation so far goes with every question; a settings
panel holds the system prompt and the sampling controls (temperature 0 = greedy), whose defaults are
``utils.generation.SAMPLING_DEFAULTS``, the ones every checkpoint trained here carries. Labels are Chinese and
English. Nothing is fetched from the internet: analytics are off and the theme's fonts are served by Gradio. A server
started with an API key gets it from ``--api_key`` or ``$MINI_QWEN_API_KEY``.

Answers are shown as plain text, line breaks kept. A model's answer is text someone else may have steered (a
prompt injection in a pasted document), and Gradio's chat renders HTML: with Markdown off it still sets the text as
HTML after a sanitizer that keeps forms, password fields and images, so an answer could put a fake sign-in form on
the page or make the browser fetch a URL that carries data out. With Markdown on, images, LaTeX and Mermaid
diagrams fetch and draw more. So each answer is HTML-escaped before it is shown (``as_shown``), Markdown, LaTeX and
Mermaid are off, and the escaping is undone when the history goes back to the model (``build_messages``).

The "Thinking" box turns on the chat template's thinking switch (``chat_template_kwargs``, as vLLM takes it): the
server returns the reasoning apart (``reasoning_content``), which the page shows folded above the answer and never
sends back: the next question carries the answers only, as OpenAI-compatible servers expect.
"""

from __future__ import annotations

import html
import os
import sys
from dataclasses import dataclass, field

# Before gradio and huggingface_hub are imported: no usage reports, no update checks, no Hub.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_UPDATE_CHECK"] = "1"
# The page calls itself at start-up and calls the model server on this machine; a proxy set for the internet
# must not be asked for either.
for _name in ("NO_PROXY", "no_proxy"):
    os.environ[_name] = ",".join(filter(None, (os.environ.get(_name), "127.0.0.1", "localhost")))

LABELS = {
    "title": "mini_qwen 聊天 / Chat",
    "system": "系统提示 / System prompt",
    "temperature": "温度 / Temperature (0 = greedy)",
    "top_p": "Top-p",
    "max_tokens": "最大生成长度 / Max new tokens",
    "thinking": "思考 / Thinking (the model reasons first)",
    "thought": "💭 思考过程 / Reasoning",
    "settings": "设置 / Settings",
    "placeholder": "输入消息，回车发送 / Type a message, Enter to send",
    "send": "发送 / Send",
    "stop": "停止 / Stop",
    "empty": "（空回答 / empty answer）",
    "no_server": "⚠️ 无法连接模型服务 / Cannot reach the model server",
    "server_error": "⚠️ 模型服务出错 / Model server error",
}
NOTE_PREFIX = "⚠️"  # the page's own notes in the chat, which are not part of the conversation
API_KEY_ENV = "MINI_QWEN_API_KEY"  # the server's variable (tools.serve)
# Answers are escaped text: keep their line breaks and spaces as written.
CSS = "#chatbot .message .md { white-space: pre-wrap; }"


@dataclass
class WebArguments:
    base_url: str = field(default="http://127.0.0.1:8000/v1", metadata={"help": "The server's OpenAI base URL."})
    model: str | None = field(default=None, metadata={"help": "Model name (default: the first the server lists)."})
    host: str = field(default="127.0.0.1", metadata={"help": "Listen address of the page (this machine only)."})
    port: int = field(default=7860, metadata={"help": "Listen port of the page."})
    system_prompt: str = field(default="", metadata={"help": "The system prompt box's initial text."})
    # The launcher passes the served checkpoint's own values, so the page needs no torch to find them.
    temperature: float | None = field(
        default=None, metadata={"help": "Initial temperature (default: SAMPLING_DEFAULTS; 0 = greedy)."}
    )
    top_p: float | None = field(default=None, metadata={"help": "Initial top-p (default: SAMPLING_DEFAULTS)."})
    max_new_tokens: int = field(default=512, metadata={"help": "Initial answer length limit, in tokens."})
    timeout: float = field(default=120.0, metadata={"help": "Seconds to wait for the server per request."})
    api_key: str | None = field(
        default=None, metadata={"help": f"The server's API key (default: ${API_KEY_ENV}; none: the server has none)."}
    )

    def __post_init__(self):
        self.api_key = self.api_key or os.environ.get(API_KEY_ENV) or None
        if self.temperature is None or self.top_p is None:
            from utils.generation import SAMPLING_DEFAULTS  # imports torch: about 3 s

            self.temperature = SAMPLING_DEFAULTS["temperature"] if self.temperature is None else self.temperature
            self.top_p = SAMPLING_DEFAULTS["top_p"] if self.top_p is None else self.top_p


def content_text(content) -> str:
    """Gradio's message content (a string, a ``{"text": ...}`` part, or a list of parts) as plain text."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text") if isinstance(content.get("text"), str) else ""
    if isinstance(content, list | tuple):
        return "".join(content_text(part) for part in content)
    return ""


def as_shown(text: str) -> str:
    """Model text as the page shows it: HTML-escaped, so that the browser draws it as the characters it is."""
    return html.escape(text, quote=False)


def build_messages(message: str, history: list, system_prompt: str = "") -> list[dict]:
    """OpenAI messages: the system prompt (if any), Gradio's history (``[{"role", "content"}, ...]``) without the
    page's own notes and shown reasoning (a message with a ``metadata`` title) and with the answers as the model wrote
    them (``as_shown`` undone), then the new message."""
    messages = [{"role": "system", "content": system_prompt.strip()}] if system_prompt.strip() else []
    for turn in history or []:
        role = turn.get("role") if isinstance(turn, dict) else None
        if role not in ("user", "assistant") or (turn.get("metadata") or {}).get("title"):
            continue
        text = content_text(turn.get("content"))
        if role == "assistant" and text.startswith(NOTE_PREFIX):
            continue
        messages.append({"role": role, "content": html.unescape(text) if role == "assistant" else text})
    return [*messages, {"role": "user", "content": message}]


def build_demo(args: WebArguments):
    """The ChatInterface; its function streams the growing answer, or a note when the server fails."""
    import gradio as gr
    import openai

    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key or "none", timeout=args.timeout, max_retries=0)
    chosen = {"model": args.model}

    def shown(reasoning: str, text: str):
        """The answer as the chat shows it; with reasoning, that first as a folded message."""
        if not reasoning:
            return as_shown(text)
        thought = gr.ChatMessage(role="assistant", content=as_shown(reasoning), metadata={"title": LABELS["thought"]})
        return [thought, gr.ChatMessage(role="assistant", content=as_shown(text) or LABELS["empty"])]

    def respond(
        message: str,
        history: list,
        system_prompt: str,
        temperature: float,
        top_p: float,
        max_tokens: int,
        thinking: bool = False,
    ):
        try:
            chosen["model"] = chosen["model"] or client.models.list().data[0].id
            stream = client.chat.completions.create(
                model=chosen["model"],
                messages=build_messages(message, history, system_prompt),
                stream=True,
                temperature=float(temperature),
                top_p=float(top_p),
                max_tokens=int(max_tokens),
                # Only when asked for: a server without the switch then still answers the other requests.
                extra_body={"chat_template_kwargs": {"enable_thinking": True}} if thinking else None,
            )
            reasoning = text = ""
            for chunk in stream:
                delta = chunk.choices[0].delta if chunk.choices else None
                if delta is not None and (getattr(delta, "reasoning_content", None) or delta.content):
                    reasoning += getattr(delta, "reasoning_content", None) or ""
                    text += delta.content or ""
                    yield shown(reasoning, text)
            if not text and not reasoning:
                yield LABELS["empty"]
        except openai.APIConnectionError:
            yield as_shown(f"{LABELS['no_server']}: {args.base_url}")
        except openai.APIError as err:  # a refusal (APIStatusError), or an error event in the stream
            status = getattr(err, "status_code", None)
            yield as_shown(f"{LABELS['server_error']}{f' {status}' if status else ''}: {err.message}")

    # Made outside any Blocks, so ChatInterface lays them out itself: chat, input box, then the settings panel
    # (inside a `with gr.Blocks()` they would render where they are made, above the chat).
    return gr.ChatInterface(
        respond,
        chatbot=gr.Chatbot(
            height=420,
            elem_id="chatbot",
            label=LABELS["title"],
            render_markdown=False,
            sanitize_html=True,
            latex_delimiters=[],
            allow_tags=False,
        ),
        textbox=gr.Textbox(
            placeholder=LABELS["placeholder"], elem_id="chat-input", submit_btn=LABELS["send"], stop_btn=LABELS["stop"]
        ),
        additional_inputs=[
            gr.Textbox(value=args.system_prompt, label=LABELS["system"], lines=2, elem_id="system-prompt"),
            gr.Slider(0.0, 2.0, value=args.temperature, step=0.05, label=LABELS["temperature"]),
            gr.Slider(0.05, 1.0, value=args.top_p, step=0.05, label=LABELS["top_p"]),
            gr.Slider(1, 4096, value=args.max_new_tokens, step=1, label=LABELS["max_tokens"]),
            gr.Checkbox(value=False, label=LABELS["thinking"], elem_id="thinking"),
        ],
        additional_inputs_accordion=gr.Accordion(label=LABELS["settings"], open=True),
        title=LABELS["title"],
        description=f"`{args.base_url}`" + (f" · `{args.model}`" if args.model else ""),
        analytics_enabled=False,
        fill_height=False,
    )


def main(args: WebArguments) -> int:
    """Serve the page until Ctrl-C."""
    demo = build_demo(args)
    print(f"web page: http://{args.host}:{args.port}/  (model server: {args.base_url})", flush=True)
    try:
        demo.queue().launch(
            server_name=args.host,
            server_port=args.port,
            share=False,
            inbrowser=False,
            show_error=True,
            quiet=True,
            css=CSS,
        )
    except KeyboardInterrupt:  # a Ctrl-C before Gradio waits (and handles it itself) still ends quietly
        demo.close()
    return 0


def parse_web_args(argv: list[str] | None = None) -> WebArguments:
    from utils.train.args import parse_args  # imports transformers: after the Hub is switched off above

    return parse_args((WebArguments,), argv)[0]


if __name__ == "__main__":
    sys.exit(main(parse_web_args()))
