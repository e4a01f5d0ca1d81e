"""A seeded synthetic corpus that exercises every rule of the Gopher quality, Gopher repetition, C4 and FineWeb
filters near their thresholds: ordinary prose, and documents pushed past one rule or several (short or long
words, hashes, ellipses, bullets, digits, missing stop words, repeated lines, paragraphs and n-grams, lines
without end punctuation, lorem ipsum, javascript, braces, policy lines, short lines, many newlines), plus
documents with random mixtures of those features. Standard library only; the text is generated here (no
third-party text), so it ships with the project under its licence.

usage: make_filter_corpus.py OUT.jsonl [--docs 800] [--seed 7]"""
import argparse
import json
import random

STOP = ["the", "be", "to", "of", "and", "that", "have", "with"]
WORDS = ("liver spleen kidney patient scan report image lesion normal size contour study clinic doctor nurse "
         "hospital measure finding result evidence contrast vessel flow signal tissue organ surface margin "
         "cyst stone duct wall pressure treatment follow review history symptom pain fever week month day "
         "morning evening river mountain village garden kitchen window letter market train bridge music story "
         "teacher student language history science winter summer autumn spring water light sound road city").split()
LONG = ["electroencephalography", "gastroenterological", "immunohistochemistry", "thrombocytopenia",
        "cholangiopancreatography", "hepatosplenomegaly"]
SHORT = ["a", "i", "at", "on", "up", "go", "is", "it", "so", "do"]
POLICY = ["terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies"]
END = [".", ".", ".", "!", "?", '."', ".'"]


def sentence(rng, n=None, stop_p=0.3, vocab=WORDS, digits_p=0.0, end=True):
    n = n or rng.randint(6, 18)
    out = []
    for _ in range(n):
        r = rng.random()
        if r < stop_p:
            out.append(rng.choice(STOP))
        elif r < stop_p + digits_p:
            out.append(str(rng.randint(0, 99999)))
        else:
            out.append(rng.choice(vocab))
    out[0] = out[0].capitalize()
    s = " ".join(out)
    if rng.random() < 0.2:
        k = rng.randrange(1, len(out))
        s = " ".join(out[:k]) + ", " + " ".join(out[k:])
    return s + (rng.choice(END) if end else "")


def prose(rng, lines=None, per_line=None, **kw):
    lines = lines or rng.randint(4, 12)
    return "\n".join(" ".join(sentence(rng, **kw) for _ in range(per_line or rng.randint(1, 4))) for _ in range(lines))


def targeted(rng, kind):
    if kind == "prose":
        return prose(rng)
    if kind == "short_doc":
        return " ".join(sentence(rng) for _ in range(rng.randint(1, 4)))
    if kind == "long_words":
        return prose(rng, vocab=LONG)
    if kind == "short_words":
        return prose(rng, vocab=SHORT)
    if kind == "hashes":
        return prose(rng) + "\n" + " ".join("#tag" for _ in range(rng.randint(5, 60)))
    if kind == "ellipsis":
        n = rng.choice([3, 5, 12])
        return "\n".join(sentence(rng, n=n, end=False) + rng.choice(["...", "…", "."]) for _ in range(rng.randint(5, 15)))
    if kind == "bullets":
        p = rng.choice([0.8, 0.95, 1.0])
        return "\n".join((rng.choice(["• ", "- ", "• ", "- ", "* "]) if rng.random() < p else "") + sentence(rng)
                         for _ in range(rng.randint(5, 15)))
    if kind == "digits":
        return prose(rng, digits_p=rng.uniform(0.1, 0.6))
    if kind == "no_stop":
        return prose(rng, stop_p=rng.choice([0.0, 0.0, 0.01, 0.03]))
    if kind == "dup_lines":
        base = [sentence(rng) for _ in range(rng.randint(3, 8))]
        return "\n".join(rng.choice(base) for _ in range(rng.randint(8, 20)))
    if kind == "dup_paragraphs":
        paras = [prose(rng, lines=2) for _ in range(rng.randint(2, 4))]
        return "\n\n".join(rng.choice(paras) for _ in range(rng.randint(4, 9)))
    if kind == "ngrams":
        phrase = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4)))
        return "\n".join(" ".join(sentence(rng) if rng.random() < 0.5 else phrase for _ in range(6)) + "."
                         for _ in range(rng.randint(3, 8)))
    if kind == "no_punct_lines":
        return "\n".join(sentence(rng, end=rng.random() < 0.3) for _ in range(rng.randint(5, 14)))
    if kind == "lorem":
        return prose(rng) + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit."
    if kind == "javascript":
        return prose(rng) + "\nPlease enable JavaScript to view this page."
    if kind == "braces":
        return prose(rng) + "\nfunction f() { return 1; }"
    if kind == "policy":
        return prose(rng) + "\n" + "This site " + rng.choice(POLICY) + " and you agree to it."
    if kind == "few_sentences":
        return sentence(rng, n=rng.randint(30, 60))
    if kind == "short_lines":
        return "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))) + rng.choice(["", "."])
                         for _ in range(rng.randint(10, 30)))
    if kind == "newlines":
        return "\n".join(sentence(rng, n=rng.randint(2, 5)) for _ in range(rng.randint(15, 40)))
    raise ValueError(kind)


KINDS = ["prose", "short_doc", "long_words", "short_words", "hashes", "ellipsis", "bullets", "digits", "no_stop",
         "dup_lines", "dup_paragraphs", "ngrams", "no_punct_lines", "lorem", "javascript", "braces", "policy",
         "few_sentences", "short_lines", "newlines"]


def mixed(rng):
    """A document of lines each drawn from a random mixture of the features, and random blank lines."""
    weights = [rng.random() ** 3 for _ in KINDS]
    parts = []
    for _ in range(rng.randint(2, 3)):
        kind = rng.choices(KINDS, weights)[0]
        parts.append(targeted(rng, kind))
    sep = rng.choice(["\n", "\n\n", "\n"])
    return sep.join(parts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--docs", type=int, default=800)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    with open(a.out, "w") as f:
        for i in range(a.docs):
            text = targeted(rng, KINDS[i % len(KINDS)]) if i % 2 == 0 else mixed(rng)
            f.write(json.dumps({"id": f"doc-{i:05d}", "text": text}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
