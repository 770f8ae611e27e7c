"""One SSE client from PyPI, driven by tests/compat.rs: it connects to a URL and prints, as one
JSON line each, everything the client hands the application. All assertions are made in
Rust; this script only reports.

    python client.py <client> <scenario> <url>

client: httpx-sse | sseclient-py | openai (openai: scenario chat only)

Lines: {"kind":"open"} {"kind":"event",type,data,id,retry} {"kind":"chat",content,chunks,
finish} {"kind":"error",message} {"kind":"end"}
"""

import json
import sys


def report(line):
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def httpx_sse(url):
    import httpx
    from httpx_sse import connect_sse

    with httpx.Client(timeout=None) as client:
        with connect_sse(client, "GET", url) as source:
            report({"kind": "open", "status": source.response.status_code})
            for sse in source.iter_sse():
                report({"kind": "event", "type": sse.event, "data": sse.data, "id": sse.id, "retry": sse.retry})
    report({"kind": "end"})


def sseclient_py(url):
    # sseclient-py parses any iterator of bytes; httpx streams the response.
    import httpx
    import sseclient

    with httpx.Client(timeout=None) as client:
        with client.stream("GET", url, headers={"accept": "text/event-stream"}) as response:
            report({"kind": "open", "status": response.status_code})
            for event in sseclient.SSEClient(response.iter_bytes()).events():
                report({"kind": "event", "type": event.event, "data": event.data, "id": event.id, "retry": event.retry})
    report({"kind": "end"})


def openai_chat(base_url):
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="demo", max_retries=0)
    stream = client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": "Hello"}],
        stream=True,
    )
    report({"kind": "open"})
    content, chunks, finish = "", 0, None
    for chunk in stream:
        chunks += 1
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        finish = choice.finish_reason or finish
    report({"kind": "chat", "content": content, "chunks": chunks, "finish": finish})
    report({"kind": "end"})


def main():
    client, scenario, url = sys.argv[1:4]
    try:
        if client == "httpx-sse":
            httpx_sse(url)
        elif client == "sseclient-py":
            sseclient_py(url)
        elif client == "openai" and scenario == "chat":
            openai_chat(url)
        else:
            raise ValueError(f"unknown client {client} for {scenario}")
    except Exception as e:  # reported, and asserted on, by the Rust side
        report({"kind": "error", "message": f"{type(e).__name__}: {e}"})


main()
