"""The real `openai` client against an OpenAI-shaped server, directly and through the
gateway: prints one JSON line {"same": bool, "direct": …, "gateway": …} and exits 1 when
what the client sees through the gateway differs from what it sees directly.

Usage: python3 openai_client.py DIRECT_BASE_URL GATEWAY_BASE_URL
"""

import json
import sys

import openai

MESSAGES = [{"role": "user", "content": "Say hello"}]


def run(base_url):
    c = openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0, timeout=30)
    seen = {}
    seen["plain"] = c.chat.completions.create(model="gpt-test", messages=MESSAGES).to_dict()
    stream = c.chat.completions.create(
        model="gpt-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    # to_dict() leaves out unset fields, so a `"usage": null` the client did not get
    # directly would show as a difference.
    seen["stream_with_usage"] = [chunk.to_dict() for chunk in stream]
    stream = c.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
    seen["stream_without_usage"] = [chunk.to_dict() for chunk in stream]
    seen["embeddings"] = c.embeddings.create(model="embed-test", input=["a", "b"]).to_dict()
    return seen


def main():
    direct = run(sys.argv[1])
    gateway = run(sys.argv[2])
    same = direct == gateway
    print(json.dumps({"same": same, "direct": direct, "gateway": gateway}))
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
