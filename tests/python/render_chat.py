#!/usr/bin/env python3
"""Reference chat-template rendering with jinja2, configured as transformers' apply_chat_template configures
it (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, raise_exception).

usage: render_chat.py CASES_JSON  → prints a JSON list of rendered strings (or {"error": ...} per case)
CASES_JSON: [{"template", "messages", "add_generation_prompt", "bos_token", "eos_token"}]
"""
import json
import sys

from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise TemplateError(message)


def main():
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    out = []
    for c in cases:
        try:
            t = env.from_string(c["template"])
            out.append(t.render(messages=c["messages"], add_generation_prompt=c["add_generation_prompt"],
                                bos_token=c["bos_token"], eos_token=c["eos_token"]))
        except TemplateError as e:
            out.append({"error": str(e)})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
