#!/usr/bin/env python3
"""Reference chat-template rendering with jinja2, configured as transformers' apply_chat_template configures
it (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, raise_exception).

usage: render_chat.py [--transformers] CASES_JSON  → prints a JSON list of rendered strings (or {"error": ...} per
case). With --transformers, each case is rendered by transformers' own `apply_chat_template` (a fast tokenizer
carrying the template and the special tokens; transformers without torch) instead of jinja2 configured alike.
CASES_JSON: [{"template", "messages", "add_generation_prompt", "bos_token", "eos_token"}]
"""
import json
import sys

from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise TemplateError(message)


def transformers_render(cases):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    out = []
    for c in cases:
        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), bos_token=c["bos_token"],
                                      eos_token=c["eos_token"])
        tok.chat_template = c["template"]
        try:
            out.append(tok.apply_chat_template(c["messages"], tokenize=False,
                                               add_generation_prompt=c["add_generation_prompt"]))
        except TemplateError as e:
            out.append({"error": str(e)})
    return out


def main():
    args = sys.argv[1:]
    if args[0] == "--transformers":
        with open(args[1]) as f:
            print(json.dumps(transformers_render(json.load(f))))
        return
    with open(args[0]) as f:
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
