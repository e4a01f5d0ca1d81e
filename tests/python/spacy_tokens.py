"""spaCy's English tokenizer (spacy.blank("en"), as datatrove's word tokenizer uses it; spaCy pinned in
tests/python/requirements.txt) over a few hundred seeded, varied lines — URLs, e-mails, contractions,
abbreviations, emoticons, numbers with units and currencies, hyphens and dashes, quotes and brackets, hashtags,
accented and Chinese text — and every special case of spaCy's English rules, alone and in context, written
as JSON [{"line": …, "tokens": […]}] for the suite to compare Strata's
spaCy-rule tokenizer against (tokens stripped, empty ones dropped, as datatrove does).

usage: spacy_tokens.py OUT.json [--lines 400] [--seed 3]"""
import argparse
import json
import random

PIECES = {
    "words": ["liver", "The", "patient", "normal", "Scan", "report", "well-known", "state-of-the-art", "e-mail",
              "co-operate", "mother-in-law", "x-ray", "X-Ray", "Hepatitis", "naïve", "café", "Zürich", "résumé",
              "ÉCOLE", "straße", "COVID-19", "B12", "H2O", "iPhone", "McDonald's", "O'Neil", "o'clock", "rock'n'roll"],
    "contractions": ["I'm", "can't", "won't", "don't", "Don't", "DON'T", "it's", "It’s", "we'd", "they're", "y'all",
                     "ain't", "could've", "shouldn't", "he'll", "She'd", "you're", "Let's", "cannot", "Cannot",
                     "gonna", "gotta", "wanna", "'tis", "’em", "isn't", "Isn’t", "we've", "I'd've"],
    "abbrev": ["Dr.", "Mr.", "Mrs.", "St.", "U.S.", "U.K.", "e.g.", "i.e.", "etc.", "vs.", "Jan.", "Feb.", "p.",
               "pp.", "No.", "approx.", "Inc.", "Ltd.", "a.m.", "p.m.", "Ph.D.", "A.B.", "Mt.", "Co.", "Prof."],
    "emoticons": [":)", ":-)", ":(", ":-(", ";)", ":D", ":P", "<3", "</3", "(:", ":'(", "^_^", "o_O", "xD",
                  ":-/", "=)", "-_-", "¯\\_(ツ)_/¯", ":O", "😀", "👍"],
    "numbers": ["5km", "10mg/kg", "3.5cm", "1,000", "1.000,5", "$20", "US$10", "€5", "£3.50", "20%", "5°C",
                "10:30am", "10:30", "24/7", "1990s", "1st", "2nd", "3rd", "4th", "+3", "-7", "1e5", "3x", "2x2",
                "100m2", "5-10", "1/2", "½", "12kg.", "15mm,", "9am", "0.5ml", "#1", "No.5", "2.5GHz"],
    "urls": ["http://example.com/a/b.", "https://www.nhs.uk/conditions?id=3&x=y", "www.example.org", "example.com",
             "example.com/path", "user@example.org", "first.last@mail.co.uk", "ftp://files.example.net/x.zip",
             "http://localhost:8080/v1", "https://t.co/AbC123"],
    "punct": ["(see", "above)", "\"quoted\"", "'single'", "“curly”", "‘also’", "[1]", "{x}", "<b>", "a/b", "a\\b",
              "...", "…", "--", "—", "–", "!!", "?!", ",", ";", ":", "(", ")", "end.", "Start.", "word--word",
              "...word...", "#hashtag", "@mention", "C++", "C#", "A&E", "&amp;", "a=b", "a+b", "___", "**bold**"],
    "cjk": ["肝脏大小正常。", "患者于2024年2月9日复诊", "（见上文）", "东京", "한국어", "日本語のテキスト", "超声检查：",
            "胆囊未见结石，", "“引号”"],
}


def line(rng):
    cats = list(PIECES)
    out = []
    for _ in range(rng.randint(3, 12)):
        piece = rng.choice(PIECES[rng.choice(cats)])
        if out and rng.random() < 0.15:
            out[-1] += piece  # glued: "word," "(see" "end.Start"
        else:
            out.append(piece)
    if rng.random() < 0.5:
        out[-1] += rng.choice([".", "!", "?", ",", ".\"", ")"])
    return " ".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--lines", type=int, default=400)
    ap.add_argument("--seed", type=int, default=3)
    a = ap.parse_args()
    import spacy

    nlp = spacy.blank("en")
    rng = random.Random(a.seed)
    rows = []
    for _ in range(a.lines):
        text = line(rng)
        tokens = [t.text.strip() for t in nlp(text) if t.text.strip()]
        rows.append({"line": text, "tokens": tokens})
    # every special case of the English tokenizer (contractions, abbreviations, emoticons) alone, and glued
    # to a word and to punctuation, as the rules must reproduce them
    for key in sorted(nlp.tokenizer.rules):
        for text in (key, f"({key})", f"word {key}."):
            tokens = [t.text.strip() for t in nlp(text) if t.text.strip()]
            rows.append({"line": text, "tokens": tokens})
    with open(a.out, "w") as f:
        json.dump({"spacy": spacy.__version__, "rows": rows}, f, ensure_ascii=False, indent=0)


if __name__ == "__main__":
    main()
